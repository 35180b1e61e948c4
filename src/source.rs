//! The texts of the mapping files a compilation read, and the `SourceLoader` through which the compiler asks
//! for included files, so that the engine core itself never touches the file system.

use std::collections::HashMap;

use crate::ast::{FileId, Span};

/// One loaded mapping file.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The name diagnostics show: the path as the user gave it, or `<embedded>/openai_ads.map`.
    pub name: String,
    pub text: String,
}

/// Every file one compilation read, addressed by [`FileId`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile { name: name.into(), text: text.into() });
        FileId((self.files.len() - 1) as u32)
    }

    pub fn get(&self, file: FileId) -> &SourceFile {
        &self.files[file.0 as usize]
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (FileId(i as u32), f))
    }

    /// 1-based line and column (in characters) of a span's start.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        let text = &self.get(span.file).text;
        let start = span.start.min(text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// `file:line:col` of a span, as rejections and warnings name the rule responsible.
    pub fn location(&self, span: Span) -> String {
        let (line, column) = self.line_col(span);
        format!("{}:{line}:{column}", self.get(span.file).name)
    }
}

/// Gives the compiler the text of a file that a mapping includes.
pub trait SourceLoader {
    /// Resolves `include "path"` written in the file named `from` to a name and reads it.
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String>;
}

/// Files the caller holds in memory, keyed by name; used for the embedded presets and in tests.
#[derive(Clone, Debug, Default)]
pub struct MemoryLoader {
    pub files: HashMap<String, String>,
}

impl SourceLoader for MemoryLoader {
    fn load(&self, _from: &str, path: &str) -> Result<(String, String), String> {
        self.files.get(path).map(|text| (path.to_string(), text.clone())).ok_or_else(|| "no such file".to_string())
    }
}

/// The largest file `include` reads.
pub const MAX_INCLUDE_BYTES: u64 = 4 << 20;

/// Reads included files from disk, relative to the directory of the including file.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileLoader;

impl SourceLoader for FileLoader {
    fn load(&self, from: &str, path: &str) -> Result<(String, String), String> {
        let base = std::path::Path::new(from).parent().unwrap_or(std::path::Path::new(""));
        let full = base.join(path);
        let name = full.to_string_lossy().into_owned();
        let metadata = std::fs::metadata(&full).map_err(|e| e.to_string())?;
        // Devices and pipes (`/dev/zero`) would never end; a mapping is small text.
        if !metadata.is_file() {
            return Err("not a regular file".to_string());
        }
        if metadata.len() > MAX_INCLUDE_BYTES {
            return Err(format!("larger than {} MiB", MAX_INCLUDE_BYTES >> 20));
        }
        std::fs::read_to_string(&full).map(|text| (name, text)).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_loader_refuses_devices_instead_of_reading_forever() {
        let error = FileLoader.load("mapping.map", "/dev/zero").unwrap_err();
        assert_eq!(error, "not a regular file");
    }

    #[test]
    fn file_loader_resolves_relative_to_the_including_file() {
        let dir = std::env::temp_dir().join(format!("engine-loader-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("shared")).unwrap();
        std::fs::write(dir.join("shared/common.map"), "messageId -> id\n").unwrap();
        let from = dir.join("main.map").to_string_lossy().into_owned();
        let (name, text) = FileLoader.load(&from, "shared/common.map").unwrap();
        assert!(name.ends_with("shared/common.map"));
        assert_eq!(text, "messageId -> id\n");
        std::fs::remove_dir_all(&dir).ok();
    }
}
