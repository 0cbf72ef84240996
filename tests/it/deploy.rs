//! deploy/: the systemd unit passes `systemd-analyze verify` and rates
//! under 3 on `systemd-analyze security` (offline), when systemd-analyze
//! is there (CI requires it: `EDGEFLOW_REQUIRE_DEPLOY_TOOLS`).

use std::process::Command;

use crate::support::{root, skip};

/// Whether `tool` runs here; if not, the test is skipped (or fails when
/// CI requires the deploy tools).
fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("EDGEFLOW_REQUIRE_DEPLOY_TOOLS").is_none(),
            "{tool} is required (EDGEFLOW_REQUIRE_DEPLOY_TOOLS) but does not run"
        );
        skip(test, &format!("{tool} is not installed"));
    }
    ok
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    if !have(
        "systemd-analyze",
        "the_systemd_unit_verifies_and_is_hardened",
    ) {
        return;
    }
    let text = std::fs::read_to_string(root("deploy/edgeflow-edge.service")).expect("unit");
    // The unit names the installed binary; verify checks that it exists,
    // so it is pointed at the one under test.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("edgeflow-edge.service");
    std::fs::write(
        &unit,
        text.replace("/usr/local/bin/edgeflow", env!("CARGO_BIN_EXE_edgeflow")),
    )
    .expect("write");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let out = String::from_utf8_lossy(&security.stdout);
    let level: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for edgeflow-edge.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {out}"));
    assert!(level < 3.0, "exposure {level}: {out}");
    // What the node relies on: readiness by sd_notify, its state directory.
    for line in [
        "Type=notify",
        "StateDirectory=edgeflow",
        "KillSignal=SIGTERM",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}");
    }
}

use yaml_rust2::{Yaml, YamlLoader};

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(root(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel} does not parse: {e}"))
}

fn s(y: &Yaml) -> &str {
    y.as_str().unwrap_or("")
}

/// The binary accepts `args` (a subcommand and its flags): clap parses
/// them, then `--help` ends the run with 0.
fn accepted(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeflow"))
        .args(args)
        .arg("--help")
        .output()
        .expect("edgeflow");
    assert!(
        out.status.success(),
        "edgeflow {args:?} is refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn port_of(listen: &str) -> i64 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen}"))
}

/// The Kubernetes manifests refer to each other consistently: volumes to
/// ConfigMaps and Secrets (and their keys), mounts to volumes, probes and
/// scrape annotations to ports, the topology's listen ports to the
/// container's, the files it names to mounts or to the image; the
/// container's command is one the binary accepts.
#[test]
fn the_kubernetes_manifests_are_consistent() {
    let kustomization = yaml_docs("deploy/k8s/kustomization.yaml");
    let mut docs = Vec::new();
    for r in kustomization[0]["resources"].as_vec().expect("resources") {
        docs.extend(yaml_docs(&format!("deploy/k8s/{}", s(r))));
    }
    let of_kind =
        |kind: &str| -> Vec<&Yaml> { docs.iter().filter(|d| s(&d["kind"]) == kind).collect() };
    let name = |d: &Yaml| s(&d["metadata"]["name"]).to_owned();
    let config_maps: Vec<&Yaml> = of_kind("ConfigMap");
    let secrets: Vec<&Yaml> = of_kind("Secret");
    let services: Vec<&Yaml> = of_kind("Service");
    let sets = of_kind("StatefulSet");
    assert_eq!(sets.len(), 2, "an edge and a central");
    for set in sets {
        let set_name = name(set);
        let spec = &set["spec"];
        let pod = &spec["template"];
        let labels = &pod["metadata"]["labels"];
        // Its headless or plain Service selects its pods.
        let service = services
            .iter()
            .find(|svc| name(svc) == s(&spec["serviceName"]))
            .unwrap_or_else(|| panic!("{set_name}: no Service {:?}", spec["serviceName"]));
        for (k, v) in service["spec"]["selector"].as_hash().expect("selector") {
            assert_eq!(&labels[s(k)], v, "{set_name}: the Service selects its pods");
        }
        let volumes = pod["spec"]["volumes"].as_vec().expect("volumes");
        let claims: Vec<String> = spec["volumeClaimTemplates"]
            .as_vec()
            .map(|v| v.iter().map(name).collect())
            .unwrap_or_default();
        for v in volumes {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(
                    config_maps.iter().any(|c| name(c) == cm),
                    "{set_name}: ConfigMap {cm}"
                );
            }
            if let Some(secret) = v["secret"]["secretName"].as_str() {
                let found = secrets
                    .iter()
                    .find(|x| name(x) == secret)
                    .unwrap_or_else(|| panic!("{set_name}: Secret {secret}"));
                for item in v["secret"]["items"].as_vec().into_iter().flatten() {
                    let key = s(&item["key"]);
                    assert!(
                        !found["stringData"][key].is_badvalue(),
                        "{set_name}: Secret {secret} has no key {key}"
                    );
                }
            }
        }
        let container = &pod["spec"]["containers"][0];
        let mut mounts = Vec::new();
        for m in container["volumeMounts"].as_vec().expect("mounts") {
            let v = s(&m["name"]);
            assert!(
                volumes.iter().any(|x| s(&x["name"]) == v) || claims.iter().any(|c| c == v),
                "{set_name}: mount of unknown volume {v}"
            );
            mounts.push(s(&m["mountPath"]).to_owned());
        }
        let ports = container["ports"].as_vec().expect("ports");
        let port = |port_name: &str| -> (i64, String) {
            let p = ports
                .iter()
                .find(|p| s(&p["name"]) == port_name)
                .unwrap_or_else(|| panic!("{set_name}: no port {port_name}"));
            (
                p["containerPort"].as_i64().expect("containerPort"),
                s(&p["protocol"]).to_owned(),
            )
        };
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let get = &container[probe]["httpGet"];
            port(s(&get["port"]));
            assert!(
                ["/ready", "/health"].contains(&s(&get["path"])),
                "{set_name}: {probe}"
            );
        }
        assert_eq!(s(&container["readinessProbe"]["httpGet"]["path"]), "/ready");
        let (metrics, _) = port("metrics");
        let (quic, proto) = port("quic");
        assert_eq!(proto, "UDP", "{set_name}: QUIC is UDP");
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(s(&annotations["prometheus.io/port"]), metrics.to_string());
        for p in service["spec"]["ports"].as_vec().expect("service ports") {
            port(s(&p["targetPort"]));
        }
        // The container's command, and the topology it reads.
        let args: Vec<String> = container["args"]
            .as_vec()
            .expect("args")
            .iter()
            .map(|a| s(a).to_owned())
            .collect();
        accepted(&args);
        let topology_path = args
            .iter()
            .skip_while(|a| *a != "--topology")
            .nth(1)
            .expect("--topology");
        assert!(
            mounts.iter().any(|m| m == topology_path),
            "{set_name}: {topology_path}"
        );
        let cm = volumes
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .and_then(|cm| config_maps.iter().find(|c| name(c) == cm))
            .expect("the topology's ConfigMap");
        let toml: toml::Value = toml::from_str(s(&cm["data"]["topology.toml"]))
            .unwrap_or_else(|e| panic!("{set_name}: the topology does not parse: {e}"));
        assert_eq!(
            port_of(toml["ingest"]["listen"].as_str().expect("ingest.listen")),
            quic
        );
        assert_eq!(
            port_of(
                toml["observability"]["listen"]
                    .as_str()
                    .expect("observability.listen")
            ),
            metrics
        );
        // Every file it names is mounted, on the state volume, or in the
        // image (the bundled topologies).
        let mut files: Vec<String> = Vec::new();
        for key in ["cert", "key"] {
            files.push(toml["ingest"][key].as_str().expect("ingest").to_owned());
        }
        for sink in toml
            .get("sink")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            for key in ["ca", "token_file"] {
                if let Some(f) = sink.get(key).and_then(|v| v.as_str()) {
                    files.push(f.to_owned());
                }
            }
        }
        for f in &files {
            assert!(
                mounts.iter().any(|m| f.starts_with(m.as_str())),
                "{set_name}: {f} is on no mount ({mounts:?})"
            );
        }
        if let Some(cluster) = toml.get("cluster") {
            check_site(&set_name, set, service, &kustomization[0], cluster, ports);
        }
        for key in ["roads", "chargers", "zones"] {
            let f = toml["reference"][key].as_str().expect("reference");
            let rel = f
                .strip_prefix("/usr/share/edgeflow/")
                .unwrap_or_else(|| panic!("{set_name}: {f} is not in the image"));
            assert!(root(rel).is_file(), "{set_name}: the image has no {rel}");
        }
    }
}

/// A StatefulSet running a site of several processes (`[cluster]`): one
/// replica per process; process i's address is pod i's stable name under
/// the headless Service, on a container port the Service publishes before
/// the pods are ready; the pods start together; each learns its index from
/// its pod name, which the binary accepts as `EDGEFLOW_PROCESS`.
fn check_site(
    set_name: &str,
    set: &Yaml,
    service: &Yaml,
    kustomization: &Yaml,
    cluster: &toml::Value,
    ports: &[Yaml],
) {
    let processes = cluster["processes"]
        .as_array()
        .expect("[cluster] processes");
    let spec = &set["spec"];
    assert_eq!(
        spec["replicas"].as_i64(),
        Some(processes.len() as i64),
        "{set_name}: a replica per process"
    );
    assert_eq!(
        s(&spec["podManagementPolicy"]),
        "Parallel",
        "{set_name}: a process is ready once all are connected: an ordered start never ends"
    );
    assert_eq!(service["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "{set_name}: the processes resolve each other before any is ready"
    );
    let namespace = s(&kustomization["namespace"]);
    let service_name = s(&service["metadata"]["name"]);
    for (i, address) in processes.iter().enumerate() {
        let address = address.as_str().expect("an address");
        let want = format!("{set_name}-{i}.{service_name}.{namespace}.svc.cluster.local:");
        assert!(
            address.starts_with(&want),
            "{set_name}: process {i} is pod {i} under the headless Service ({address})"
        );
        let port = port_of(address);
        assert!(
            ports
                .iter()
                .any(|p| p["containerPort"].as_i64() == Some(port) && s(&p["protocol"]) == "TCP"),
            "{set_name}: {address}'s port is a TCP container port"
        );
        assert!(
            (service["spec"]["ports"].as_vec().expect("service ports"))
                .iter()
                .any(|p| p["port"].as_i64() == Some(port)),
            "{set_name}: the Service publishes {address}'s port"
        );
    }
    let container = &spec["template"]["spec"]["containers"][0];
    let env = container["env"].as_vec().expect("env");
    let index = env
        .iter()
        .find(|e| s(&e["name"]) == "EDGEFLOW_PROCESS")
        .unwrap_or_else(|| panic!("{set_name}: EDGEFLOW_PROCESS"));
    assert_eq!(
        s(&index["valueFrom"]["fieldRef"]["fieldPath"]),
        "metadata.name",
        "{set_name}: the pod's name gives its index"
    );
    assert_eq!(
        s(&spec["updateStrategy"]["type"]),
        "OnDelete",
        "{set_name}: a rolling update stops one process at a time, and each stop restarts the site"
    );
    // A process stopped alone waits stop_wait, then drains: the grace
    // period outlasts both.
    let wait = humantime::parse_duration(cluster["stop_wait"].as_str().unwrap_or("30s"))
        .expect("stop_wait");
    let grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace as u64 >= wait.as_secs() + 30,
        "{set_name}: a grace period of {grace} s outlasts stop_wait ({wait:?}) and the drain"
    );
    // The pod name form the binary takes for its index.
    let last = processes.len() - 1;
    let parsed = edgeflow::runtime::Cluster::index_from(&format!("{set_name}-{last}"));
    assert_eq!(parsed, Ok(last), "{set_name}");
}

/// The Dockerfile's commands are ones the binary accepts, it exposes what
/// the manifests use, and it copies what they name.
#[test]
fn the_dockerfile_runs_commands_the_binary_accepts() {
    let text = std::fs::read_to_string(root("deploy/Dockerfile")).expect("Dockerfile");
    let json_array = |line: &str| -> Vec<String> {
        let at = line.find('[').expect("an exec-form array");
        serde_json::from_str(&line[at..]).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let entry = text
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .map(json_array)
        .expect("ENTRYPOINT");
    assert_eq!(entry, ["/usr/local/bin/edgeflow"]);
    let cmd = text
        .lines()
        .find(|l| l.starts_with("CMD"))
        .map(json_array)
        .expect("CMD");
    accepted(&cmd);
    let health = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("CMD [\"/usr/local/bin/edgeflow\", \"probe\"")
        })
        .map(json_array)
        .expect("a HEALTHCHECK probe");
    accepted(&health[1..]);
    assert!(
        text.contains("EXPOSE 4433/udp 9464/tcp"),
        "the ports the manifests use"
    );
    assert!(text.contains("COPY --from=build /src/topologies /usr/share/edgeflow/topologies"));
    assert!(text.contains("USER 10001:10001"), "not root");
    assert!(text.contains("STOPSIGNAL SIGTERM"));
}

/// The alert rules have the structure Prometheus loads, and every metric
/// they name is one the node exposes (docs/METRICS.md).
#[test]
fn the_alert_rules_name_metrics_the_node_exposes() {
    let docs = yaml_docs("deploy/prometheus/edgeflow-alerts.yaml");
    let groups = docs[0]["groups"].as_vec().expect("groups");
    let known: Vec<&str> = edgeflow::metrics::ALL.iter().map(|d| d.name).collect();
    let mut alerts = 0;
    for g in groups {
        assert!(!s(&g["name"]).is_empty());
        for rule in g["rules"].as_vec().expect("rules") {
            let alert = s(&rule["alert"]);
            let expr = s(&rule["expr"]);
            assert!(!alert.is_empty() && !expr.is_empty(), "{rule:?}");
            assert!(
                ["critical", "warning", "info"].contains(&s(&rule["labels"]["severity"])),
                "{alert}: severity"
            );
            assert!(
                !s(&rule["annotations"]["summary"]).is_empty(),
                "{alert}: summary"
            );
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("edgeflow_").map(|_| word) {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix))
                        .unwrap_or(name);
                    assert!(
                        known.contains(&name) || known.contains(&base),
                        "{alert}: {name} is no metric of the node"
                    );
                }
            }
            alerts += 1;
        }
    }
    assert!(
        alerts >= 5,
        "node down, watermark, sink backlog, disk, rejections"
    );
}

/// `kubectl kustomize` builds the manifests, where kubectl is installed.
#[test]
fn kubectl_builds_the_manifests() {
    let Ok(out) = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root("deploy/k8s"))
        .output()
    else {
        skip("kubectl_builds_the_manifests", "kubectl is not installed");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Grafana dashboard of the nodes' metrics is valid JSON whose every
/// panel queries, through its data-source variable, only metrics the node
/// exposes.
#[test]
fn the_node_dashboard_queries_metrics_the_node_exposes() {
    let text = std::fs::read_to_string(root("deploy/grafana/edgeflow-node-dashboard.json"))
        .expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let known: Vec<&str> = edgeflow::metrics::ALL.iter().map(|d| d.name).collect();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "ids are unique");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("edgeflow_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let base = name.strip_suffix("_bucket").unwrap_or(name);
                assert!(
                    known.contains(&base),
                    "{}: {name} is no metric of the node",
                    p["title"]
                );
            }
        }
    }
}
