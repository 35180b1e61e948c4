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
    /// Where each line starts, found once, so that naming the places of thousands of rules stays linear.
    line_starts: std::sync::OnceLock<Vec<usize>>,
}

impl SourceFile {
    fn line_starts(&self) -> &[usize] {
        self.line_starts
            .get_or_init(|| std::iter::once(0).chain(self.text.match_indices('\n').map(|(i, _)| i + 1)).collect())
    }
}

/// Every file one compilation read, addressed by [`FileId`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile { name: name.into(), text: text.into(), line_starts: Default::default() });
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
        let file = self.get(span.file);
        let start = span.start.min(file.text.len());
        let starts = file.line_starts();
        let line = starts.partition_point(|&s| s <= start);
        let line_start = starts[line - 1];
        let column = file.text.get(line_start..start).map_or(0, |t| t.chars().count()) + 1;
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
