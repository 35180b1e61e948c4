//! The mappings shipped inside the binary, so that `engine run` works with no files at all.

use crate::source::MemoryLoader;

/// A shipped mapping: the name diagnostics show and its text.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub text: &'static str,
}

/// `mappings/openai_ads.map`: the seed's integration; what `engine run` uses without `--map`.
pub const OPENAI_ADS: Preset =
    Preset { name: "mappings/openai_ads.map", text: include_str!("../mappings/openai_ads.map") };

/// `mappings/openai_ads_developer_docs.map`: the user object of OpenAI's developer documentation.
pub const OPENAI_ADS_DEVELOPER_DOCS: Preset = Preset {
    name: "mappings/openai_ads_developer_docs.map",
    text: include_str!("../mappings/openai_ads_developer_docs.map"),
};

pub const ALL: &[Preset] = &[OPENAI_ADS, OPENAI_ADS_DEVELOPER_DOCS];

impl Preset {
    /// Compiles the preset with the given options (presets include nothing, so no loader is needed).
    pub fn compile(&self, options: &crate::CompileOptions) -> crate::Compiled {
        crate::compile(self.name, self.text, &MemoryLoader::default(), options)
    }
}
