//! The Kubernetes manifests (deploy/kubernetes/, docs/cluster.md
//! "Kubernetes") name only settings thaw reads, so they cannot drift from
//! the server: every environment variable they set, and every key of their
//! ConfigMap and Secret for the store, appears in `thaw serve --help`; the
//! `thaw.toml` of the ConfigMap parses as `thaw serve`'s settings (unknown
//! keys are refused there); every key a container takes from a ConfigMap or
//! Secret is one it holds. (`deploy/check.sh` validates the manifests'
//! schema with kubernetes-validate.) Needs nothing but the built binary.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn manifests() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "manifests in {}: {out:?}", dir.display());
    out
}

/// An environment variable's name: upper case, digits and `_`, with a `_`.
fn env_like(word: &str) -> bool {
    word.len() > 3
        && word.contains('_')
        && word.starts_with(|c: char| c.is_ascii_uppercase())
        && word
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Names the manifests use as environment variables: `- name: X` of a
/// container's `env`, `key: X` of a reference, and data keys `X:` of a
/// ConfigMap or Secret (commented-out ones too: they document a setting).
fn env_names(yaml: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in yaml.lines() {
        let mut t = line.trim();
        if let Some(rest) = t.strip_prefix('#') {
            t = rest.trim_start();
        }
        for prefix in ["- name:", "key:"] {
            if let Some(rest) = t.strip_prefix(prefix) {
                t = rest.trim();
            }
        }
        let word = t.split(':').next().unwrap_or("").trim();
        if env_like(word) && (t.len() == word.len() || t[word.len()..].starts_with(':')) {
            names.insert(word.to_string());
        }
    }
    names
}

fn serve_help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "thaw serve --help failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn every_environment_variable_of_the_manifests_is_one_thaw_reads() {
    let help = serve_help();
    let words: BTreeSet<&str> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let mut all = BTreeSet::new();
    for (file, yaml) in manifests() {
        for name in env_names(&yaml) {
            assert!(
                words.contains(name.as_str()),
                "{file} names {name}, which `thaw serve --help` does not mention"
            );
            all.insert(name);
        }
    }
    // The shared store's settings are all there (the extraction works).
    for name in [
        "THAW_STORE_URL",
        "THAW_STORE_KEY",
        "THAW_STORE_WRITER",
        "THAW_ADVERTISE_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ALLOW_HTTP",
    ] {
        assert!(all.contains(name), "no manifest sets {name}: {all:?}");
    }
    // A misspelt name would be caught.
    assert!(!words.contains("THAW_STORE_URI"));
    assert_eq!(
        env_names("        - name: THAW_STORE_URI\n"),
        BTreeSet::from(["THAW_STORE_URI".to_string()])
    );
}

#[test]
fn the_configmaps_thaw_toml_is_valid_settings() {
    let (_, yaml) = manifests()
        .into_iter()
        .find(|(f, _)| f == "configmap.yaml")
        .expect("configmap.yaml");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "thaw.toml: |");
    lines.next().expect("a thaw.toml in the ConfigMap");
    let toml: String = lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.trim_start()))
        .collect();
    assert!(toml.contains("data_dir"), "{toml}");
    let settings: server::config::Settings =
        toml::from_str(&toml).unwrap_or_else(|e| panic!("the ConfigMap's thaw.toml: {e}\n{toml}"));
    assert_eq!(
        settings.data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/thaw"))
    );
    // An unknown key is refused, so the parse above checks every key.
    assert!(toml::from_str::<server::config::Settings>("store_uri = \"s3://x/y\"\n").is_err());
}

#[test]
fn every_key_a_container_takes_is_in_its_configmap_or_secret() {
    let all: String = manifests()
        .into_iter()
        .map(|(_, y)| y + "\n---\n")
        .collect();
    // The data keys of each ConfigMap and Secret, by kind and name.
    let mut held = BTreeSet::new();
    for doc in all.split("\n---\n") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or("");
        let name = doc
            .lines()
            .skip_while(|l| !l.starts_with("metadata:"))
            .find_map(|l| l.trim().strip_prefix("name: "))
            .unwrap_or("");
        let mut in_data = false;
        for line in doc.lines() {
            if line == "data:" || line == "stringData:" {
                in_data = true;
                continue;
            }
            if !line.starts_with(' ') && !line.starts_with('#') {
                in_data = false;
            }
            if in_data && !line.trim_start().starts_with('#') {
                if let Some((key, _)) = line.trim().split_once(':') {
                    if line.starts_with("  ") && !line.starts_with("   ") {
                        held.insert((kind.to_string(), name.to_string(), key.to_string()));
                    }
                }
            }
        }
    }
    // Each reference: `configMapKeyRef:` or `secretKeyRef:`, then name, key
    // and maybe `optional: true`.
    let lines: Vec<&str> = all.lines().map(str::trim).collect();
    let mut refs = 0;
    for (i, l) in lines.iter().enumerate() {
        let kind = match *l {
            "configMapKeyRef:" => "ConfigMap",
            "secretKeyRef:" => "Secret",
            _ => continue,
        };
        let field = |f: &str| {
            lines[i + 1..(i + 4).min(lines.len())]
                .iter()
                .find_map(|l| l.strip_prefix(f))
                .map(str::trim)
                .unwrap_or("")
        };
        let (name, key, optional) = (field("name:"), field("key:"), field("optional:"));
        refs += 1;
        assert!(
            optional == "true" || held.contains(&(kind.into(), name.into(), key.into())),
            "a container takes {key} from {kind} {name}, which does not hold it (held: {held:?})"
        );
    }
    assert!(refs >= 14, "{refs} references found");
}
