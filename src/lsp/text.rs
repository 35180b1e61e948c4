//! Translation between the engine's coordinates and the protocol's: byte offsets to LSP positions (lines and
//! UTF-16 code units, the encoding every client supports) and back, and `file:` URIs to paths and back.

use std::path::{Component, Path, PathBuf};

use lsp_types::{Position, Range, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// Line starts of one text, for converting between byte offsets and positions.
pub struct LineIndex<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub fn new(text: &'t str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, line_starts }
    }

    /// The position of a byte offset; an offset past the end or inside a character is moved back to the
    /// nearest character boundary.
    pub fn position(&self, offset: usize) -> Position {
        let offset = floor_char_boundary(self.text, offset);
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        let start = self.line_starts[line];
        let character = self.text[start..offset].encode_utf16().count();
        Position::new(line as u32, character as u32)
    }

    pub fn range(&self, start: usize, end: usize) -> Range {
        Range::new(self.position(start), self.position(end))
    }

    /// The byte offset of a position; positions past the end of their line mean the line's end, and lines past
    /// the end of the text mean the text's end (clients may send either after an edit race).
    pub fn offset(&self, position: Position) -> usize {
        let Some(&start) = self.line_starts.get(position.line as usize) else {
            return self.text.len();
        };
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let mut units = 0usize;
        for (i, c) in self.text[start..line_end].char_indices() {
            if units >= position.character as usize {
                return start + i;
            }
            units += c.len_utf16();
        }
        line_end
    }

    /// The text of the line holding `offset`, from its start up to `offset`.
    pub fn line_before(&self, offset: usize) -> &'t str {
        let offset = floor_char_boundary(self.text, offset);
        let line = self.line_starts.partition_point(|&start| start <= offset) - 1;
        &self.text[self.line_starts[line]..offset]
    }
}

/// The largest character boundary at or before `offset`, so that a stray offset never splits a character.
pub fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// Characters a path keeps escaped in a `file:` URI: what RFC 3986 does not allow in a path segment.
const PATH_ESCAPES: &AsciiSet =
    &CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'<').add(b'>').add(b'?').add(b'`').add(b'{').add(b'}');

/// The local path a `file:` URI names; `None` for other schemes.
pub fn uri_to_path(uri: &Uri) -> Option<PathBuf> {
    if !uri.scheme().is_some_and(|s| s.as_str().eq_ignore_ascii_case("file")) {
        return None;
    }
    let decoded = percent_decode_str(uri.path().as_str()).decode_utf8().ok()?;
    // `file:///C:/dir/a.map` names `C:/dir/a.map` on Windows.
    let bytes = decoded.as_bytes();
    let windows_drive = bytes.len() >= 3 && bytes[0] == b'/' && bytes[1].is_ascii_alphabetic() && bytes[2] == b':';
    let path = if windows_drive && cfg!(windows) { &decoded[1..] } else { &decoded[..] };
    Some(PathBuf::from(path))
}

/// The `file:` URI of an absolute path; `None` for relative paths, which no URI can name.
pub fn path_to_uri(path: &Path) -> Option<Uri> {
    if !path.is_absolute() {
        return None;
    }
    let text = path.to_str()?.replace('\\', "/");
    let text = if text.starts_with('/') { text } else { format!("/{text}") };
    format!("file://{}", utf8_percent_encode(&text, PATH_ESCAPES)).parse().ok()
}

/// A path with `.` and `..` resolved lexically, so that a file reached through `sub/../a.map` and the same file
/// opened in the editor have one name. Symbolic links are left alone on purpose: editors name files as the user
/// opened them.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_utf16_code_units() {
        // `é` is two bytes and one UTF-16 unit; `😀` is four bytes and two units.
        let text = "a\n\"é😀\" -> x\n";
        let index = LineIndex::new(text);
        let arrow = text.find("->").unwrap();
        assert_eq!(index.position(arrow), Position::new(1, 6));
        assert_eq!(index.offset(Position::new(1, 6)), arrow);
        assert_eq!(index.position(0), Position::new(0, 0));
        assert_eq!(index.position(text.len()), Position::new(2, 0));
    }

    #[test]
    fn positions_out_of_range_are_clamped() {
        let text = "ab\ncd";
        let index = LineIndex::new(text);
        assert_eq!(index.offset(Position::new(0, 99)), 2);
        assert_eq!(index.offset(Position::new(9, 0)), text.len());
        assert_eq!(index.position(99), Position::new(1, 2));
    }

    #[test]
    fn file_uris_round_trip_through_paths() {
        let uri: Uri = "file:///tmp/my%20maps/a%23b.map".parse().unwrap();
        let path = uri_to_path(&uri).unwrap();
        assert_eq!(path, PathBuf::from("/tmp/my maps/a#b.map"));
        assert_eq!(path_to_uri(&path).unwrap().as_str(), "file:///tmp/my%20maps/a%23b.map");
        let untitled: Uri = "untitled:Untitled-1".parse().unwrap();
        assert_eq!(uri_to_path(&untitled), None);
        assert_eq!(path_to_uri(Path::new("relative.map")), None);
    }

    #[test]
    fn normalize_resolves_dots_lexically() {
        assert_eq!(normalize(Path::new("/a/b/../c/./d.map")), PathBuf::from("/a/c/d.map"));
        assert_eq!(normalize(Path::new("../x.map")), PathBuf::from("../x.map"));
    }
}
