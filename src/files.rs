//! The file-system edge: the one place the library reads files, for the binary, the relay and tests that compile
//! mappings from disk. The core (compile, plan, run) never calls it; it is handed a [`SourceLoader`], and embedders
//! without a file system pass a [`crate::source::MemoryLoader`] or their own.

use crate::source::SourceLoader;

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
