//! What the console changes, kept in the store so that it survives restarts, and how it meets relay.yaml at start.
//! The file stays the source of truth for what it sets: a pixel the file defines keeps the console's edits only
//! while the file's section for it (and its mapping file) is the one the edits were made over; once the file
//! changes, the file's settings apply again and the console's mapping versions stay in the history for a rollback.
//! Pixels added in the console live in the store alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::config::{ConfigError, Integration, RelayConfig};
use super::registry::{MappingText, Origin, Setup};
use super::store::{Store, StoreError};
use crate::compile::CompileOptions;
use crate::files::FileLoader;
use crate::plan::Plan;
use crate::presets;
use crate::source::MemoryLoader;

/// A pixel as the console keeps it under `pixel/<name>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub origin: Origin,
    /// For a pixel of relay.yaml: the fingerprint of its section when the console edited it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_fingerprint: Option<String>,
    /// The settings in force; for a pixel of relay.yaml, `None` until the console changes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    /// Mapping versions saved in the console, oldest first (version 0, the file's mapping, is not stored).
    #[serde(default)]
    pub mappings: Vec<SavedMapping>,
    /// The version in force.
    #[serde(default)]
    pub active: u64,
}

/// The settings of a pixel the console may change. The API key is kept apart (`secret/<name>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Settings {
    pub pixel_id: String,
    pub validate_only: bool,
    pub endpoint: String,
    pub params: Map<String, Value>,
    #[serde(default)]
    pub disabled: bool,
    /// The embedded preset the pixel's version-0 mapping is, for pixels added in the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SavedMapping {
    pub version: u64,
    pub source: String,
    pub saved_ms: i64,
    /// What the version was made from: `saved` or `rollback to N`.
    pub note: String,
}

impl Settings {
    pub fn of(config: &Integration, disabled: bool, preset: Option<String>) -> Settings {
        Settings {
            pixel_id: config.pixel_id.clone(),
            validate_only: config.validate_only,
            endpoint: config.endpoint.clone(),
            params: config.params.clone(),
            disabled,
            preset,
        }
    }
}

pub(super) fn record_key(name: &str) -> String {
    format!("pixel/{name}")
}

pub(super) fn secret_key(name: &str) -> String {
    format!("secret/{name}")
}

/// The fingerprint of a pixel's section of relay.yaml and of its mapping file: what console edits are made over.
pub(super) fn fingerprint(config: &Integration, mapping_source: &str) -> String {
    let key_digest = config.api_key.as_ref().map(|k| hex(&Sha256::digest(k.expose_secret().as_bytes())));
    let section = serde_json::json!({
        "pixel_id": config.pixel_id,
        "validate_only": config.validate_only,
        "endpoint": config.endpoint,
        "params": config.params,
        "mapping": config.mapping,
        "mapping_source": mapping_source,
        "api_key": key_digest,
    });
    hex(&Sha256::digest(section.to_string().as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A mapping that does not compile: its diagnostics, rendered and as JSON.
pub(super) struct Broken(pub Box<crate::Compiled>);

/// Compiles a pixel's mapping text; `file` is where it lives on disk, so that its `include`s resolve beside it.
pub(super) fn compile(
    name: &str,
    source: &str,
    file: Option<&Path>,
    params: &Map<String, Value>,
) -> Result<Plan, Broken> {
    let options = CompileOptions { params: params.clone() };
    let compiled = match file {
        Some(_) => crate::compile(name, source, &FileLoader, &options),
        None => crate::compile(name, source, &MemoryLoader::default(), &options),
    };
    match compiled.plan {
        Some(plan) if !compiled.has_errors() => Ok(plan),
        _ => Err(Broken(Box::new(compiled))),
    }
}

fn render(broken: &Broken) -> String {
    crate::diagnostic::render(
        &broken.0.diagnostics,
        &broken.0.sources,
        crate::diagnostic::RenderOptions { color: false, width: 100 },
    )
}

/// The mapping relay.yaml gives a pixel (version 0): its file, or the embedded preset.
fn file_mapping(config: &Integration) -> Result<MappingText, ConfigError> {
    match &config.mapping {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("mapping of `{}`: cannot read {}: {e}", config.name, path.display()))
            })?;
            Ok(MappingText { name: path.to_string_lossy().into_owned(), source: text.into(), version: 0 })
        }
        None => Ok(preset_mapping(None)),
    }
}

/// An embedded preset as version 0: `openai_ads` (the default) or `openai_ads_developer_docs`.
pub(super) fn preset_mapping(preset: Option<&str>) -> MappingText {
    let chosen =
        presets::ALL.iter().find(|p| preset.is_some_and(|name| preset_name(p) == name)).unwrap_or(&presets::OPENAI_ADS);
    MappingText { name: chosen.name.to_string(), source: chosen.text.into(), version: 0 }
}

/// A preset's short name: its file name without `.map`.
pub(super) fn preset_name(preset: &presets::Preset) -> &'static str {
    preset.name.rsplit('/').next().unwrap_or(preset.name).trim_end_matches(".map")
}

/// The source of mapping `version` of a pixel whose version 0 is `base`.
pub(super) fn version_source(record: &Record, base: &MappingText, version: u64) -> Option<MappingText> {
    if version == 0 {
        return Some(base.clone());
    }
    let saved = record.mappings.iter().find(|m| m.version == version)?;
    Some(MappingText { name: base.name.clone(), source: saved.source.as_str().into(), version })
}

/// Where a pixel's mapping file is, for includes.
pub(super) fn mapping_file(config: &Integration) -> Option<PathBuf> {
    config.mapping.clone()
}

pub(super) fn load_record(store: &dyn Store, name: &str) -> Result<Option<Record>, StoreError> {
    let key = record_key(name);
    match store.settings(&key)?.into_iter().find(|(k, _)| *k == key) {
        Some((_, bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError(format!("the console's record of `{name}` cannot be read: {e}"))),
        None => Ok(None),
    }
}

/// The setups the relay starts with: relay.yaml's pixels with the console's edits that still apply, then the
/// pixels added in the console. A mapping with errors in relay.yaml stops the start, as it always did.
pub(super) fn setups(config: &RelayConfig, store: &dyn Store) -> Result<Vec<Setup>, ConfigError> {
    let stored = |e: StoreError| ConfigError(format!("the console's settings: {}", e.0));
    let records: Vec<(String, Record)> = store
        .settings("pixel/")
        .map_err(stored)?
        .into_iter()
        .filter_map(|(key, bytes)| {
            let name = key.strip_prefix("pixel/")?.to_string();
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) => Some((name, record)),
                Err(error) => {
                    tracing::warn!(pixel = %name, %error, "the console's record of a pixel cannot be read; ignored");
                    None
                }
            }
        })
        .collect();
    let secrets: Vec<(String, Vec<u8>)> = store.settings("secret/").map_err(stored)?;
    let secret_of = |name: &str| {
        let key = secret_key(name);
        secrets
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, bytes)| String::from_utf8(bytes.clone()).ok())
            .map(SecretString::from)
    };
    let mut setups = Vec::new();
    let mut rewrites = Vec::new();
    for integration in &config.integrations {
        let base = file_mapping(integration)?;
        let file = mapping_file(integration);
        let fingerprint = fingerprint(integration, &base.source);
        let record = records.iter().find(|(name, r)| *name == integration.name && r.origin == Origin::File);
        let (config, mut mapping, disabled) = match record {
            Some((_, record)) if record.file_fingerprint.as_deref() == Some(&fingerprint) => {
                let mut config = integration.clone();
                let mut disabled = false;
                if let Some(settings) = &record.settings {
                    apply(&mut config, settings);
                    disabled = settings.disabled;
                }
                if let Some(key) = secret_of(&integration.name) {
                    config.api_key = Some(key);
                }
                let mapping = version_source(record, &base, record.active).unwrap_or(base.clone());
                (config, mapping, disabled)
            }
            Some((_, record)) => {
                tracing::warn!(
                    pixel = %integration.name,
                    "relay.yaml changed this pixel since it was edited in the console: the file's settings and \
                     mapping apply; the console's mapping versions stay in the history"
                );
                let mut record = record.clone();
                record.file_fingerprint = Some(fingerprint.clone());
                record.settings = None;
                record.active = 0;
                rewrites.push((record_key(&integration.name), Some(serde_json::to_vec(&record).expect("JSON"))));
                rewrites.push((secret_key(&integration.name), None));
                (integration.clone(), base.clone(), false)
            }
            None => (integration.clone(), base.clone(), false),
        };
        let plan = match compile(&mapping.name, &mapping.source, file.as_deref(), &config.params) {
            Ok(plan) => plan,
            Err(broken) if mapping.version == 0 => {
                return Err(ConfigError(format!("mapping of `{}` has errors:\n{}", integration.name, render(&broken))))
            }
            Err(broken) => {
                // A version saved in the console compiled then; a newer engine may judge it differently.
                tracing::warn!(
                    pixel = %integration.name,
                    version = mapping.version,
                    diagnostics = %render(&broken),
                    "the console's mapping no longer compiles: the file's mapping applies"
                );
                mapping = base.clone();
                compile(&base.name, &base.source, file.as_deref(), &config.params).map_err(|broken| {
                    ConfigError(format!("mapping of `{}` has errors:\n{}", integration.name, render(&broken)))
                })?
            }
        };
        setups.push(Setup {
            config,
            plan: Arc::new(plan),
            mapping,
            base,
            fingerprint: Some(fingerprint),
            disabled,
            origin: Origin::File,
        });
    }
    for (name, record) in &records {
        if record.origin != Origin::Console {
            continue;
        }
        if config.integrations.iter().any(|i| i.name == *name) {
            tracing::warn!(pixel = %name, "relay.yaml now defines a pixel of this name: the file's applies");
            continue;
        }
        let Some(settings) = &record.settings else { continue };
        let mut integration = Integration {
            name: name.clone(),
            pixel_id: String::new(),
            api_key: secret_of(name),
            validate_only: true,
            mapping: None,
            params: Map::new(),
            endpoint: String::new(),
        };
        apply(&mut integration, settings);
        let base = preset_mapping(settings.preset.as_deref());
        let mut mapping = version_source(record, &base, record.active).unwrap_or(base.clone());
        let plan = match compile(&mapping.name, &mapping.source, None, &integration.params) {
            Ok(plan) => plan,
            Err(broken) => {
                tracing::warn!(pixel = %name, diagnostics = %render(&broken), "the console's mapping no longer compiles: the preset applies");
                mapping = base.clone();
                match compile(&base.name, &base.source, None, &integration.params) {
                    Ok(plan) => plan,
                    Err(broken) => {
                        tracing::error!(pixel = %name, diagnostics = %render(&broken), "the pixel's mapping does not compile: it is left out");
                        continue;
                    }
                }
            }
        };
        setups.push(Setup {
            config: integration,
            plan: Arc::new(plan),
            mapping,
            base,
            fingerprint: None,
            disabled: settings.disabled,
            origin: Origin::Console,
        });
    }
    if !rewrites.is_empty() {
        store.put_settings(&rewrites).map_err(stored)?;
    }
    Ok(setups)
}

/// Applies the console's settings over a pixel's configuration.
pub(super) fn apply(config: &mut Integration, settings: &Settings) {
    config.pixel_id = settings.pixel_id.clone();
    config.validate_only = settings.validate_only;
    config.endpoint = settings.endpoint.clone();
    config.params = settings.params.clone();
}
