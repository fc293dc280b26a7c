//! What ships under `ops/` is checked against the real server and the real
//! tools: metric names against a running SFT's /metrics, the Prometheus
//! files with promtool, the systemd unit with systemd-analyze, and the Helm
//! chart's values and config against the templates and the server's keys.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestSft;

fn ops(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Names like `sft_...` and `process_...` in PromQL text.
fn metric_names(promql: &str) -> BTreeSet<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("sft_") || token.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// The metric family a sample name belongs to (`x_bucket` of histogram `x`).
fn family<'a>(name: &'a str, exposition: &str) -> &'a str {
    for suffix in ["_bucket", "_count", "_sum"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if exposition.contains(&format!("# TYPE {base} histogram")) {
                return base;
            }
        }
    }
    name
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_served() {
    let rules = read(&ops("prometheus/sft-alerts.yml"));
    let dashboard: serde_json::Value = serde_json::from_str(&read(&ops("grafana/sft.json"))).unwrap();
    let mut exprs = vec![rules];
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    exprs.push(dashboard["templating"]["list"][1]["query"].as_str().unwrap().to_owned());
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    assert!(used.len() >= 12, "too few names found, is the parsing right? {used:?}");

    let sft = TestSft::start("").await;
    let exposition = sft.metrics().await;
    let missing: Vec<&String> =
        used.iter().filter(|name| !exposition.contains(&format!("# TYPE {} ", family(name, &exposition)))).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}");
}

fn run(tool: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not runnable ({e}); tests/run.sh installs it"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_their_unit_tests_pass() {
    let dir = ops("prometheus");
    run("promtool", &["check", "config", "prometheus.yml"], &dir);
    let checked = run("promtool", &["check", "rules", "sft-alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS: 11 rules found"), "{checked}");
    run("promtool", &["test", "rules", "sft-alerts.test.yml"], &dir);
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    // verify insists the ExecStart binary exists: point it at the one built.
    let unit = read(&ops("systemd/sft.service")).replace("/usr/local/bin/sft", env!("CARGO_BIN_EXE_sft"));
    assert!(
        unit.contains("DynamicUser=yes")
            && unit.contains("ProtectSystem=strict")
            && unit.contains("NoNewPrivileges=yes")
    );
    let dir = std::env::temp_dir().join(format!("sft-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("sft.service"), unit).unwrap();
    let output = run("systemd-analyze", &["verify", "sft.service"], &dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!output.contains("sft.service:"), "systemd-analyze complains:\n{output}");
}

/// `.Values.a.b` paths in a template.
fn value_paths(template: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (at, _) in template.match_indices(".Values.") {
        let path: String = template[at + ".Values.".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
            .collect();
        paths.insert(path.trim_end_matches('.').to_owned());
    }
    paths
}

fn lookup<'a>(values: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
    path.split('.').try_fold(values, |node, key| node.get(key))
}

/// Every leaf path of a YAML mapping (maps that are empty count as leaves).
fn leaves(node: &serde_yaml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match node.as_mapping() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let key = key.as_str().unwrap();
                let path = if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") };
                leaves(child, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

#[test]
fn the_helm_chart_uses_exactly_the_values_it_declares() {
    // Helm itself is not packaged for Debian; this checks what a render
    // would trip over first: YAML, and values used versus declared.
    let chart = ops("helm/sft");
    let meta: serde_yaml::Value = serde_yaml::from_str(&read(&chart.join("Chart.yaml"))).unwrap();
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "sft");
    let values: serde_yaml::Value = serde_yaml::from_str(&read(&chart.join("values.yaml"))).unwrap();
    let mut used = BTreeSet::new();
    let mut templates = String::new();
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        let text = read(&entry.unwrap().path());
        used.extend(value_paths(&text));
        templates.push_str(&text);
    }
    let undeclared: Vec<&String> = used.iter().filter(|p| lookup(&values, p).is_none()).collect();
    assert!(undeclared.is_empty(), "templates use values missing from values.yaml: {undeclared:?}");
    let mut declared = BTreeSet::new();
    leaves(&values, "", &mut declared);
    let unused: Vec<&String> =
        declared.iter().filter(|leaf| !used.iter().any(|u| leaf.starts_with(u.as_str()))).collect();
    assert!(unused.is_empty(), "values.yaml declares values no template uses: {unused:?}");
    // The drain is the SFT's own: the grace period follows drainTimeout.
    assert!(templates.contains("terminationGracePeriodSeconds: {{ add .Values.drainTimeout 60 }}"));
    assert!(templates.contains("path: /readyz") && !templates.contains("sleep"));
}

/// `(section, key)` of every `key = ...` line under a `[section]` header.
fn toml_keys(text: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim().trim_start_matches("# ").trim_start_matches('#');
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.to_owned();
        } else if let Some((key, _)) = line.split_once(" = ") {
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.is_empty() {
                keys.insert((section.clone(), key.to_owned()));
            }
        }
    }
    keys
}

#[test]
fn the_chart_config_names_only_keys_the_server_knows() {
    let template = read(&ops("helm/sft/templates/configmap.yaml"));
    let toml_part = &template[template.find("sft.toml: |").unwrap()..];
    let documented = toml_keys(&read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sft.toml")));
    let unknown: Vec<(String, String)> = toml_keys(toml_part)
        .into_iter()
        .filter(|(section, _)| section != "federation.peers")
        .filter(|key| !documented.contains(key))
        .collect();
    assert!(unknown.is_empty(), "keys config/sft.toml does not have: {unknown:?}");
}

#[test]
fn the_container_builds_the_server_alone_and_runs_it_as_non_root() {
    let containerfile = read(&ops("Containerfile"));
    assert!(containerfile.contains("--no-default-features --bin sft"));
    let final_stage = containerfile.rsplit("\nFROM ").next().unwrap();
    let user = final_stage.lines().find_map(|l| l.strip_prefix("USER ")).expect("the final stage sets USER");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "runs as {user}");
}
