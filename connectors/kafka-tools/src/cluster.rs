//! How the tools reach a cluster: the command-line arguments that add
//! client properties (TLS, SASL) to the environment's settings, shared by
//! `exactly-audit` and `exactly-crash-harness`.
//!
//! Owns [`ClusterArgs`] and the file that hands the properties to a child
//! process. Does not own what the properties mean: that is
//! [`ClientSettings`] (librdkafka's names, honoured by the raw protocol
//! client too).

use std::path::{Path, PathBuf};

use clap::Args;
use exactly_kafka::client::{ClientSettings, PROPERTIES_FILE_ENV, PropertiesFileError};

/// Client properties on the command line, on top of
/// `EXACTLY_KAFKA_BOOTSTRAP` and `EXACTLY_KAFKA_PROPERTIES_FILE`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// A Kafka client property, librdkafka's name (repeatable), for
    /// example `--property security.protocol=SASL_SSL`.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = key_value)]
    pub properties: Vec<(String, String)>,
    /// A file of client properties (`key=value` lines), read before the
    /// `--property` flags.
    #[arg(long, value_name = "PATH")]
    pub properties_file: Option<PathBuf>,
}

/// Parses `KEY=VALUE`.
fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

impl ClusterArgs {
    /// The environment's settings ([`ClientSettings::from_env`]) with the
    /// properties file and the `--property` flags applied, in that order.
    ///
    /// # Errors
    ///
    /// [`PropertiesFileError`] when a file cannot be used.
    pub fn settings(&self) -> Result<ClientSettings, PropertiesFileError> {
        let mut settings = ClientSettings::from_env()?;
        if let Some(file) = &self.properties_file {
            settings = settings.properties_file(file)?;
        }
        for (key, value) in &self.properties {
            settings = settings.property(key, value);
        }
        Ok(settings)
    }
}

/// Writes `settings`' bootstrap address and properties to `path` as a
/// properties file, and returns the environment variable and value that
/// make a child process's [`ClientSettings::from_env`] read it.
///
/// # Errors
///
/// The I/O error of writing the file.
pub fn hand_to_child(
    settings: &ClientSettings,
    path: &Path,
) -> std::io::Result<(&'static str, PathBuf)> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut text = format!("bootstrap.servers={}\n", settings.bootstrap);
    for (key, value) in &settings.properties {
        text.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(path, text)?;
    Ok((PROPERTIES_FILE_ENV, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cluster: ClusterArgs,
    }

    #[test]
    fn properties_from_a_file_and_flags_reach_a_child_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.properties");
        std::fs::write(&file, "security.protocol=SASL_SSL\nsasl.username=app\n").unwrap();
        let cli = Cli::try_parse_from([
            "tool",
            "--properties-file",
            file.to_str().unwrap(),
            "--property",
            "sasl.username=other",
            "--property",
            "sasl.mechanism=SCRAM-SHA-512",
        ])
        .unwrap();
        let settings = cli.cluster.settings().unwrap();
        assert_eq!(settings.properties["security.protocol"], "SASL_SSL");
        assert_eq!(settings.properties["sasl.username"], "other", "flags win");
        assert_eq!(settings.properties["sasl.mechanism"], "SCRAM-SHA-512");
        let handed = dir.path().join("child.properties");
        let (variable, path) = hand_to_child(&settings, &handed).unwrap();
        assert_eq!(variable, PROPERTIES_FILE_ENV);
        let child = ClientSettings::new("elsewhere:1")
            .properties_file(&path)
            .unwrap();
        assert_eq!(child, settings);
    }

    #[test]
    fn a_property_without_a_value_is_refused_naming_it() {
        let error = Cli::try_parse_from(["tool", "--property", "security.protocol"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("expected KEY=VALUE"), "{error}");
        assert!(error.contains("security.protocol"), "{error}");
    }
}
