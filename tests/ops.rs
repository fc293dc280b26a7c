//! What ships under `ops/` is checked against the real server and the real
//! tools: metric names against a running SFT's /metrics, the Prometheus
//! files with promtool, the systemd unit with systemd-analyze, the Helm
//! chart's values and config against the templates and the server's keys,
//! and its upgrade strategy, drain and per-replica URLs (read from the
//! templates, no Helm here) against docs/operations.md, whose SRV record
//! must match docs/federation.md's.

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
    for entry in std::fs::read_dir(chart.join("templates")).unwrap() {
        used.extend(value_paths(&read(&entry.unwrap().path())));
    }
    let undeclared: Vec<&String> = used.iter().filter(|p| lookup(&values, p).is_none()).collect();
    assert!(undeclared.is_empty(), "templates use values missing from values.yaml: {undeclared:?}");
    let mut declared = BTreeSet::new();
    leaves(&values, "", &mut declared);
    let unused: Vec<&String> =
        declared.iter().filter(|leaf| !used.iter().any(|u| leaf.starts_with(u.as_str()))).collect();
    assert!(unused.is_empty(), "values.yaml declares values no template uses: {unused:?}");
}

/// The value of the key at `path` in a chart template, found by
/// indentation: lines that hold only a template action or a comment are
/// skipped, and a list item `- key: value` is `"-"` then `key`. The first
/// match, or `None`.
fn template_field<'a>(template: &'a str, path: &[&str]) -> Option<&'a str> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for line in template.lines() {
        let mut rest = line.trim_start();
        if rest.is_empty() || rest.starts_with('#') || rest.starts_with("{{") || rest == "---" {
            continue;
        }
        let mut indent = line.len() - rest.len();
        while let Some(item) = rest.strip_prefix("- ") {
            stack.retain(|(at, _)| *at < indent);
            stack.push((indent, "-"));
            indent += 2;
            rest = item.trim_start();
        }
        let Some((key, value)) = rest.split_once(':') else { continue };
        if key.is_empty() || key.contains(' ') || key.contains('"') {
            continue;
        }
        stack.retain(|(at, _)| *at < indent);
        stack.push((indent, key));
        if stack.iter().map(|(_, key)| *key).eq(path.iter().copied()) {
            return Some(value.trim());
        }
    }
    None
}

/// `(variable, body)` of every `range $v := until (int .Values.replicaCount)`
/// block, the body up to its `end` (such blocks hold no other block).
fn per_replica_blocks(template: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    for (at, _) in template.match_indices("{{- range $") {
        let head_end = at + template[at..].find("}}").unwrap() + 2;
        let head = &template[at + "{{- range ".len()..head_end - 2];
        let Some((variable, over)) = head.split_once(":=") else { continue };
        if over.trim() != "until (int .Values.replicaCount)" {
            continue;
        }
        let body_end = head_end + template[head_end..].find("{{- end }}").expect("range ends");
        let body = &template[head_end..body_end];
        assert!(!body.contains("{{- if") && !body.contains("{{- range") && !body.contains("{{- with"), "{body}");
        blocks.push((variable.trim().to_owned(), body.to_owned()));
    }
    blocks
}

#[test]
fn the_chart_replaces_a_pod_only_when_deleted_and_lets_it_drain_in_full() {
    let chart = ops("helm/sft/templates");
    let statefulset = read(&chart.join("statefulset.yaml"));
    // A rolling update would drain one replica after the other (an hour
    // each), its replacement starting only when it has gone: pods are
    // replaced when the operator deletes them.
    assert_eq!(template_field(&statefulset, &["spec", "updateStrategy", "type"]), Some("OnDelete"));
    // SIGTERM drains by itself: no preStop hook, no sleep.
    assert_eq!(template_field(&statefulset, &["spec", "template", "spec", "containers", "-", "lifecycle"]), None);
    assert!(!statefulset.contains("sleep"));
    let probe = ["spec", "template", "spec", "containers", "-", "readinessProbe", "httpGet"];
    assert_eq!(template_field(&statefulset, &[&probe[..], &["path"]].concat()), Some("/readyz"));
    assert_eq!(template_field(&statefulset, &[&probe[..], &["port"]].concat()), Some("metrics"));

    // The grace period is the server's drain_timeout, from the same value,
    // plus a margin: Kubernetes kills only an SFT that outlived its drain.
    let grace = template_field(&statefulset, &["spec", "template", "spec", "terminationGracePeriodSeconds"]).unwrap();
    let (value, margin) = grace
        .strip_prefix("{{ add .Values.")
        .and_then(|g| g.strip_suffix(" }}"))
        .and_then(|g| g.split_once(' '))
        .unwrap_or_else(|| panic!("terminationGracePeriodSeconds is not a value plus a margin: {grace}"));
    let margin: u64 = margin.parse().unwrap();
    assert!(margin > 0, "no time left to exit after drain_timeout");
    let configmap = read(&chart.join("configmap.yaml"));
    let drain_timeout = configmap.lines().find_map(|l| l.trim().strip_prefix("drain_timeout = ")).unwrap();
    assert_eq!(drain_timeout, format!("{{{{ .Values.{value} }}}}"), "grace period and drain_timeout differ");

    // docs/operations.md says what the chart does.
    let guide = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    assert!(guide.contains("`updateStrategy: OnDelete`"), "docs/operations.md does not name the update strategy");
    assert!(guide.contains(&format!("`{value} + {margin}`")), "docs/operations.md: the grace period is {grace}");
}

#[test]
fn every_replica_has_its_own_service_and_ingress_host() {
    let chart = ops("helm/sft/templates");
    let statefulset = read(&chart.join("statefulset.yaml"));
    assert_eq!(template_field(&statefulset, &["spec", "replicas"]), Some("{{ .Values.replicaCount }}"));
    // A StatefulSet's pods are named after it: <name>-<ordinal>.
    let name = template_field(&statefulset, &["metadata", "name"]).unwrap().replace(" . ", " $ ");
    let pod = |variable: &str| format!("{name}-{{{{ {variable} }}}}");

    let services = per_replica_blocks(&read(&chart.join("service.yaml")));
    assert_eq!(services.len(), 1, "one Service per replica");
    let (variable, service) = &services[0];
    assert_eq!(template_field(service, &["kind"]), Some("Service"));
    let selected = template_field(service, &["spec", "selector", "statefulset.kubernetes.io/pod-name"]);
    assert_eq!(selected, Some(pod(variable).as_str()), "the Service selects its replica's pod alone");
    let service_name = template_field(service, &["metadata", "name"]).unwrap();
    assert_eq!(template_field(service, &["spec", "ports", "-", "targetPort"]), Some("signalling"));
    // A draining SFT still answers its calls' DELETEs through its URL.
    assert_eq!(template_field(service, &["spec", "publishNotReadyAddresses"]), Some("true"));

    let ingress = per_replica_blocks(&read(&chart.join("ingress.yaml")));
    let rules: Vec<&(String, String)> = ingress.iter().filter(|(_, body)| body.contains("host:")).collect();
    assert_eq!(rules.len(), 1, "one ingress rule per replica");
    let (variable, rule) = rules[0];
    let host = template_field(rule, &["-", "host"]).unwrap();
    assert!(host.contains(variable.as_str()), "every replica needs its own host: {host}");
    let backend = template_field(rule, &["-", "http", "paths", "-", "backend", "service", "name"]).unwrap();
    let (service_variable, _) = &services[0];
    assert_eq!(backend, service_name.replace(service_variable.as_str(), variable), "host i reaches replica i");
    let tls_hosts: Vec<String> = ingress
        .iter()
        .filter(|(_, body)| !body.contains("host:"))
        .map(|(v, body)| body.trim().trim_start_matches("- ").replace(v.as_str(), variable))
        .collect();
    assert_eq!(tls_hosts, [host], "every host is in the TLS section");

    // The host names the guide gives are the ones the default values make.
    let values: serde_yaml::Value = serde_yaml::from_str(&read(&ops("helm/sft/values.yaml"))).unwrap();
    let ingress_values = &values["signalling"]["ingress"];
    let helper = read(&chart.join("_helpers.tpl"));
    assert!(helper.contains(r#"printf "%s-%d.%s" .hostPrefix $.replica .baseDomain"#), "the host scheme changed");
    let first = format!(
        "{}-0.{}",
        ingress_values["hostPrefix"].as_str().unwrap(),
        ingress_values["baseDomain"].as_str().unwrap()
    );
    let guide = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    assert!(guide.contains(&first), "docs/operations.md does not show the host {first}");
}

#[test]
fn the_srv_record_is_the_same_in_the_guides_and_names_the_control_plane_port() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let records = |text: &str| -> Vec<String> {
        text.lines().map(str::trim).filter(|l| l.starts_with("_sft-federation._tcp.")).map(str::to_owned).collect()
    };
    let operations = records(&read(&docs.join("operations.md")));
    assert_eq!(operations.len(), 1, "docs/operations.md spells the SRV record out once: {operations:?}");
    assert_eq!(records(&read(&docs.join("federation.md"))), operations, "docs/federation.md says otherwise");
    // _sft-federation._tcp.D. TTL IN SRV priority weight port target
    let fields: Vec<&str> = operations[0].split_whitespace().collect();
    assert_eq!(fields[2..4], ["IN", "SRV"]);
    let values: serde_yaml::Value = serde_yaml::from_str(&read(&ops("helm/sft/values.yaml"))).unwrap();
    assert_eq!(fields[6], values["federation"]["port"].as_u64().unwrap().to_string(), "the chart's control plane port");
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
