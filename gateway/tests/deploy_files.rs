//! The deployment files in `deploy/`, checked with the real tools where this machine
//! has them, and structurally where it does not:
//!
//! - `space-gateway.service`: `systemd-analyze verify`, then its `ExecStart` command
//!   line and `Environment=` run with `gateway.toml`: the real gateway must start with
//!   that file, serve its certificate and stop cleanly on SIGTERM in `TimeoutStopSec`.
//! - `gateway.nomad.hcl`, `space.nomad.hcl`: `nomad job validate` cannot be installed
//!   here (no Debian, PyPI or npm package ships Nomad), so both are parsed with the
//!   PyPI package python-hcl2 and their structure is asserted. The gateway job's
//!   arguments, environment and rendered `gateway.toml` then start the real gateway,
//!   with the image's `ENV` from the `Containerfile` underneath as a container would.
//! - `lb-nginx.conf`: `nginx -t` on a copy aimed at 127.0.0.1, then that copy runs in
//!   front of a gateway: HTTPS, the agent TLS port and a QUIC datagram go through it.
//! - `Containerfile`: lexical checks only (no container engine here).
//!
//! Every tool comes from `scripts/install-test-deps.sh`; a missing one fails the test
//! with that hint, never skips it. Only std is used.

// Helpers outside #[test] functions unwrap too: a failure is a failed test.
#![allow(clippy::unwrap_used)]
// The workspace bans `Instant::now` in favour of tokio's pausable clock; these are
// wall-clock deadlines for real processes.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const GATEWAY: &str = env!("CARGO_BIN_EXE_gateway");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const INSTALL_HINT: &str = "run scripts/install-test-deps.sh (as root) to install it";

/// Environment variables that deployment files may set although the gateway does not
/// read them yet. The admin listener is being built; the files already carry its
/// variable so that they need no change when it lands. Once `gateway --help` lists
/// it, this list only repeats it.
const FORTHCOMING_GATEWAY_ENV: &[&str] = &["GATEWAY_ADMIN_LISTEN"];

/// The `KNOT_*` variables a space job must set (the design's agent environment).
const SPACE_ENV: &[&str] = &[
    "KNOT_AGENT_ENDPOINT",
    "KNOT_SPACEID",
    "KNOT_USER",
    "KNOT_SSH_PORT",
    "KNOT_HTTP_PORT",
    "KNOT_CODE_SERVER_PORT",
    "KNOT_VNC_HTTP_PORT",
    "KNOT_AGENT_TOKEN",
    "KNOT_AGENT_CA_FILE",
];

// ---------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = system_program("systemd-analyze");
    let unit = read(&deploy("space-gateway.service"));
    let tmp = TempDir::new("deploy-systemd");

    // `verify` refuses a unit whose ExecStart binary does not exist ("Command ... is
    // not executable"), and /usr/local/bin/gateway is not installed on a test machine.
    // The copy points at the binary this test was built with instead; nothing else in
    // the unit changes. `verify` needs no running systemd (it works in a container
    // whose PID 1 is not systemd), only the unit file.
    assert!(
        unit.contains("ExecStart=/usr/local/bin/gateway "),
        "the unit should run /usr/local/bin/gateway:\n{unit}"
    );
    let copy = tmp.path().join("space-gateway.service");
    write(&copy, &unit.replace("/usr/local/bin/gateway", GATEWAY));
    let output = run_output(Command::new(&analyze).arg("verify").arg(&copy));
    let text = output_text(&output);
    // `verify` exits 0 on unknown keys and bad values: it only warns ("Unknown key
    // ... ignoring"). Any line about our unit fails the test too.
    let about_unit: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("space-gateway.service") || l.contains(path_str(&copy)))
        .collect();
    assert!(
        output.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {}: {}\n{text}",
        copy.display(),
        output.status
    );

    // The same check sees a mistake: a misspelt key must produce a warning.
    let broken = tmp.path().join("broken").join("space-gateway.service");
    fs::create_dir_all(broken.parent().unwrap()).unwrap();
    write(
        &broken,
        &unit
            .replace("/usr/local/bin/gateway", GATEWAY)
            .replace("[Service]\n", "[Service]\nNoNewPrivilege=yes\n"),
    );
    let text = output_text(&run_output(
        Command::new(&analyze).arg("verify").arg(&broken),
    ));
    assert!(
        text.contains("NoNewPrivilege"),
        "systemd-analyze verify did not flag an unknown key, so the check above \
         proves nothing:\n{text}"
    );

    // What the deployment relies on, beyond syntax.
    let service = unit_settings(&unit);
    let expect = |key: &str, value: &str| {
        assert!(
            service
                .get(key)
                .is_some_and(|v| v.iter().any(|x| x == value)),
            "space-gateway.service: expected {key}={value}, found {:?}",
            service.get(key)
        );
    };
    expect("Type", "simple");
    expect(
        "ExecStart",
        "/usr/local/bin/gateway --config /etc/space-gateway/gateway.toml run",
    );
    expect("ExecReload", "/bin/kill -HUP $MAINPID");
    expect("KillSignal", "SIGTERM");
    expect("StateDirectory", "space-gateway");
    expect("Environment", "GATEWAY_DATA_DIR=/var/lib/space-gateway");
    expect("NoNewPrivileges", "yes");
    expect("ProtectSystem", "strict");
    expect("ProtectHome", "yes");
    expect("PrivateTmp", "yes");
    assert!(
        service.contains_key("User") || service.contains_key("DynamicUser"),
        "space-gateway.service runs as root: set User= or DynamicUser="
    );
    assert!(
        stop_timeout(&service) >= Duration::from_secs(30),
        "TimeoutStopSec leaves too little time for draining"
    );
    assert!(
        !service.contains_key("AmbientCapabilities"),
        "the gateway's ports are above 1024: it needs no capabilities"
    );
}

#[test]
fn example_gateway_toml_runs_with_the_units_command_line() {
    let unit = unit_settings(&read(&deploy("space-gateway.service")));
    let tmp = TempDir::new("deploy-toml");
    let relocations = [
        ("/etc/space-gateway/", tmp.path().join("etc")),
        ("/var/lib/space-gateway", tmp.path().join("data")),
    ];

    // The unit's own command line and environment, with its paths moved into the
    // temporary directory: /etc/space-gateway/gateway.toml is deploy/gateway.toml.
    let exec = &unit["ExecStart"][0];
    let mut args: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    let program = args.remove(0);
    assert_eq!(program, "/usr/local/bin/gateway");
    let args: Vec<String> = args.iter().map(|a| relocate(a, &relocations)).collect();
    let config_path = PathBuf::from(
        args.iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .unwrap_or_else(|| panic!("ExecStart has no --config FILE: {exec}")),
    );
    let env: Vec<(String, String)> = unit
        .get("Environment")
        .into_iter()
        .flatten()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_owned(), relocate(v, &relocations))
        })
        .collect();

    let toml = relocate_quoted(&read(&deploy("gateway.toml")), &relocations);
    fs::create_dir_all(config_path.parent().unwrap()).unwrap();
    write(&config_path, &toml);
    let settings = toml_strings(&toml);
    for key in [
        "public.cert",
        "public.key",
        "auth.public_key",
        "public.domain",
    ] {
        assert!(
            settings.contains_key(key),
            "deploy/gateway.toml should set {key} for production"
        );
    }
    let domain = provide_files(&settings, &env, tmp.path());

    let mut gateway = GatewayProcess::start(&args, &env, tmp.path());
    let cert = Path::new(&settings["public.cert"]);
    gateway.assert_serves_certificate(&domain, cert);
    // ExecReload: SIGHUP reloads, it does not end the gateway.
    gateway.reload();
    gateway.assert_serves_certificate(&domain, cert);
    gateway.stop_within(stop_timeout(&unit));

    // The same start with a key the gateway does not know must fail, naming it: the
    // check above would catch a misspelt setting in deploy/gateway.toml.
    let bad = format!("{toml}\n[agents_typo]\nlisten = \"127.0.0.1:1\"\n");
    write(&config_path, &bad);
    let refused = GatewayProcess::expect_refusal(&args, &env, tmp.path());
    assert!(
        refused.contains("agents_typo"),
        "the gateway should name the unknown key:\n{refused}"
    );
}

// ---------------------------------------------------------------------------
// Nomad
// ---------------------------------------------------------------------------

#[test]
fn gateway_nomad_job_has_the_required_structure_and_runs() {
    let tmp = TempDir::new("deploy-nomad-gw");
    let rendered = tmp.path().join("task");
    let mut known: Vec<String> = gateway_env_names();
    known.extend(FORTHCOMING_GATEWAY_ENV.iter().map(|s| s.to_string()));
    check_nomad_job(
        "gateway",
        &deploy("gateway.nomad.hcl"),
        &rendered,
        &known,
        &[],
    );

    // The job's task, as the docker driver would run it: the image's ENV from the
    // Containerfile, overridden by the job's env, the job's args after the image's
    // ENTRYPOINT, and the templates rendered into local/ and secrets/ (mounted at
    // /local and /secrets). The test writes real key material where the templates
    // would put the control plane's.
    let relocations = [
        ("/local/", rendered.join("local")),
        ("/secrets/", rendered.join("secrets")),
        ("/var/lib/space-gateway", tmp.path().join("data")),
    ];
    let mut env: BTreeMap<String, String> = containerfile_env();
    for line in read(&rendered.join("env")).lines() {
        let (k, v) = line.split_once('=').unwrap();
        env.insert(k.to_owned(), v.to_owned());
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| {
            let v = nomad_runtime_stand_ins(&v);
            (k, relocate(&v, &relocations))
        })
        .collect();
    let args: Vec<String> = read(&rendered.join("args"))
        .lines()
        .map(|a| relocate(a, &relocations))
        .collect();
    let config_path = PathBuf::from(
        args.iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .expect("--config in the job's args"),
    );
    let toml = relocate_quoted(&read(&config_path), &relocations);
    write(&config_path, &toml);
    let mut settings = toml_strings(&toml);
    if let Some((_, key)) = env.iter().find(|(k, _)| k == "GATEWAY_PUBLIC_KEY") {
        settings.insert("auth.public_key".into(), key.clone());
    }
    let domain = provide_files(&settings, &env, tmp.path());

    let mut gateway = GatewayProcess::start(&args, &env, tmp.path());
    gateway.assert_serves_certificate(&domain, Path::new(&settings["public.cert"]));
    // The job's health check asks the admin listener for /readyz. Once the gateway
    // reads GATEWAY_ADMIN_LISTEN (its --help lists it), that path must answer 200 at
    // the address the job gives; before, there is no listener to ask.
    if gateway_env_names()
        .iter()
        .any(|n| n == "GATEWAY_ADMIN_LISTEN")
    {
        let admin = &env
            .iter()
            .find(|(k, _)| k == "GATEWAY_ADMIN_LISTEN")
            .unwrap()
            .1;
        let code = http_status(&format!("http://{admin}/readyz"));
        assert_eq!(code, "200", "GET http://{admin}/readyz\n{}", gateway.log());
    }
    // The certificate templates' change_signal.
    gateway.reload();
    gateway.assert_serves_certificate(&domain, Path::new(&settings["public.cert"]));
    gateway.stop_within(Duration::from_secs(60));
}

#[test]
fn space_nomad_job_has_the_required_structure() {
    let tmp = TempDir::new("deploy-nomad-space");
    let known = agent_env_names();
    for name in SPACE_ENV {
        assert!(
            known.iter().any(|k| k == name),
            "agent-link no longer reads {name}: update SPACE_ENV and deploy/space.nomad.hcl"
        );
    }
    check_nomad_job(
        "space",
        &deploy("space.nomad.hcl"),
        tmp.path(),
        &known,
        SPACE_ENV,
    );
}

/// Parses a Nomad job file with python-hcl2 and asserts its structure; for the
/// gateway job, writes the task's args, env and templates to `out`.
fn check_nomad_job(kind: &str, file: &Path, out: &Path, known_env: &[String], required: &[&str]) {
    let python = program_in_path("python3");
    let probe = run_output(Command::new(&python).args(["-c", "import hcl2"]));
    assert!(
        probe.status.success(),
        "python3 cannot import hcl2 (PyPI package python-hcl2); {INSTALL_HINT}:\n{}",
        output_text(&probe)
    );
    let output = run_output(
        Command::new(&python)
            .args(["-c", NOMAD_CHECK, kind])
            .arg(file)
            .arg(out)
            .arg(known_env.join(","))
            .arg(required.join(",")),
    );
    assert!(
        output.status.success(),
        "{} does not have the structure a {kind} job needs ({}):\n{}",
        file.display(),
        output.status,
        output_text(&output)
    );
}

/// The structural check of a Nomad job, run by python3 with python-hcl2.
/// Arguments: kind (gateway|space), job file, output directory, known env names,
/// required env names. Exits 1 listing every problem found.
const NOMAD_CHECK: &str = r##"
import json, os, sys, textwrap
import hcl2

kind, path, outdir = sys.argv[1], sys.argv[2], sys.argv[3]
known = set(filter(None, sys.argv[4].split(",")))
required = list(filter(None, sys.argv[5].split(",")))
problems = []

def check(ok, what):
    if not ok:
        problems.append(what)
    return ok

# python-hcl2 >= 7 keeps strings with their quotes and heredocs as written;
# older versions do neither. Normalize both to plain Python values.
def heredoc(v):
    head, _, rest = v.partition("\n")
    marker = head.lstrip("<").lstrip("-").strip()
    lines = rest.split("\n")
    if lines and lines[-1].strip() == marker:
        lines = lines[:-1]
    body = "\n".join(lines) + "\n"
    return textwrap.dedent(body) if head.startswith("<<-") else body

def text(v):
    if not isinstance(v, str):
        return v
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        if v[1:].startswith("<<"):
            return heredoc(v[1:-1])
        try:
            return json.loads(v, strict=False)
        except ValueError:
            return v[1:-1]
    if v.startswith("<<"):
        return heredoc(v)
    return v

def norm(v):
    if isinstance(v, dict):
        return {text(k): norm(x) for k, x in v.items()
                if not (isinstance(k, str) and k.startswith("__"))}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return text(v)

def blocks(node, name):
    v = node.get(name, [])
    return v if isinstance(v, list) else [v]

def labeled(node, name):
    return [(label, body) for b in blocks(node, name) for label, body in b.items()]

def secs(d):
    d = str(d)
    for unit, n in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if d.endswith(unit) and d[: -len(unit)].replace(".", "", 1).isdigit():
            return float(d[: -len(unit)]) * n
    return 0

with open(path) as f:
    doc = norm(hcl2.load(f))

jobs = labeled(doc, "job")
check(len(jobs) == 1, "expected exactly one job block, found %d" % len(jobs))
job_name, job = jobs[0] if jobs else ("", {})
check(job.get("type", "service") == "service", "job type is %r, not service" % job.get("type"))
groups = labeled(job, "group")
check(len(groups) == 1, "expected one group, found %d" % len(groups))
group_name, group = groups[0] if groups else ("", {})
tasks = labeled(group, "task")
check(len(tasks) == 1, "expected one task in group %r, found %d" % (group_name, len(tasks)))
task_name, task = tasks[0] if tasks else ("", {})
check(task.get("driver") == "docker", "task %r: driver is %r, not docker" % (task_name, task.get("driver")))
config = (blocks(task, "config") or [{}])[0]
check(bool(config.get("image")), "task %r: no docker image" % task_name)
check(task.get("kill_signal") == "SIGTERM", "task %r: kill_signal is %r" % (task_name, task.get("kill_signal")))
check(bool(blocks(group, "restart") or blocks(task, "restart")), "no restart block")
resources = (blocks(task, "resources") or [{}])[0]
check("cpu" in resources and "memory" in resources, "task %r: resources need cpu and memory" % task_name)

ports = {label: body for net in blocks(group, "network") for label, body in labeled(net, "port")}
checks = [c for s in blocks(group, "service") + blocks(task, "service") for c in blocks(s, "check")]

env = {}
for e in blocks(task, "env"):
    env.update(e)
templates = blocks(task, "template")
for t in templates:
    if t.get("env") is True:
        for line in t.get("data", "").splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                env[line.split("=", 1)[0].strip()] = line.split("=", 1)[1]
# Paths inside the container: the docker driver mounts local/ and secrets/ at /local and /secrets.
provided = {"/" + t.get("destination", "").lstrip("/"): t for t in templates if t.get("destination")}
mounts = [m.get("destination", "") for m in blocks(task, "volume_mount")]
def provided_file(p):
    return p in provided or any(m and p.startswith(m.rstrip("/") + "/") for m in mounts)

prefix = "GATEWAY_" if kind == "gateway" else "KNOT_"
for name in sorted(env):
    if name.startswith(prefix):
        check(name in known, "%s is not a variable the program reads (known: %s)" % (name, ", ".join(sorted(known))))
for name in required:
    check(name in env, "%s is not set (env block or env template)" % name)

if kind == "gateway":
    check(job.get("update") is not None, "no update block for rolling deployments")
    for label, number in (("agent", 7443), ("https", 8443), ("admin", 9090)):
        check(ports.get(label, {}).get("static") == number,
              "network port %r should be static %d, is %r" % (label, number, ports.get(label)))
    # Nomad ports carry no protocol: a label reserves the number for TCP and UDP.
    host_net = config.get("network_mode") == "host"
    check(host_net or {"agent", "https", "admin"} <= set(config.get("ports", [])),
          "the docker task neither uses network_mode = host nor maps agent, https and admin")
    check(env.get("GATEWAY_AGENT_LISTEN") == "0.0.0.0:7443",
          "GATEWAY_AGENT_LISTEN is %r, not 0.0.0.0:7443" % env.get("GATEWAY_AGENT_LISTEN"))
    check(str(env.get("GATEWAY_PUBLIC_LISTEN", "")).endswith(":8443"), "GATEWAY_PUBLIC_LISTEN is not on 8443")
    check(bool(env.get("GATEWAY_DOMAIN")), "GATEWAY_DOMAIN is not set")
    admin = str(env.get("GATEWAY_ADMIN_LISTEN", ""))
    check("NOMAD_ADDR_admin" in admin or admin.endswith(":9090"), "GATEWAY_ADMIN_LISTEN is not the admin port")
    key = env.get("GATEWAY_PUBLIC_KEY", "")
    check(str(key).endswith("verify-key.pem") and provided_file(key),
          "GATEWAY_PUBLIC_KEY %r is not a verify-key.pem that a template or volume provides" % key)
    ready = [c for c in checks if c.get("path") == "/readyz"]
    check(len(ready) == 1, "expected one check on /readyz, found %d" % len(ready))
    for c in ready:
        check(c.get("type") == "http" and c.get("port") == "admin", "the /readyz check is not an http check on the admin port")
    check(secs(task.get("kill_timeout", "0s")) >= 30, "kill_timeout %r leaves too little time to drain" % task.get("kill_timeout"))
    args = [str(a) for a in config.get("args", [])]
    cfg = args[args.index("--config") + 1] if "--config" in args[:-1] else ""
    check(cfg in provided, "the --config file %r is not rendered by a template" % cfg)
    data = provided.get(cfg, {}).get("data", "")
    for k in ("cert", "key"):
        check(any(l.strip().startswith(k + " ") or l.strip().startswith(k + "=") for l in data.splitlines()),
              "the rendered gateway.toml does not set public.%s" % k)
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "args"), "w") as f:
        f.write("".join(a + "\n" for a in args))
    with open(os.path.join(outdir, "env"), "w") as f:
        f.write("".join("%s=%s\n" % (k, v) for k, v in sorted(env.items())))
    for dest, t in provided.items():
        target = os.path.join(outdir, dest.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as f:
            f.write(t.get("data", ""))

if kind == "space":
    csi = [(label, v) for label, v in labeled(group, "volume") if v.get("type") == "csi"]
    check(len(csi) == 1, "expected one volume of type csi, found %d" % len(csi))
    for label, v in csi:
        check(bool(v.get("source")), "the csi volume has no source")
        check(any(m.get("volume") == label and m.get("destination") == "/home" for m in blocks(task, "volume_mount")),
              "no volume_mount of volume %r at /home" % label)
    ping = [c for c in checks if c.get("path") == "/ping"]
    check(len(ping) == 1, "expected one check on /ping, found %d" % len(ping))
    for c in ping:
        check(c.get("type") == "http" and c.get("protocol") == "https", "the /ping check is not an https check")
        check(c.get("tls_skip_verify") is True, "the /ping check does not set tls_skip_verify = true")
        port = ports.get(c.get("port") or "", {})
        check(3000 in (port.get("to"), port.get("static")),
              "the /ping check's port %r does not reach the agent's port 3000 (%r)" % (c.get("port"), port))
    check(str(env.get("KNOT_AGENT_ENDPOINT", "")).endswith(":7443"), "KNOT_AGENT_ENDPOINT is not the gateway's agent port 7443")

if problems:
    sys.stderr.write("".join("- %s\n" % p for p in problems))
    sys.exit(1)
print("%s job %r: group %r, task %r, ports %s, env %s" % (kind, job_name, group_name, task_name, sorted(ports), sorted(env)))
"##;

/// Stand-ins for Nomad's runtime interpolation in env values: `${NOMAD_ADDR_x}`
/// becomes a free loopback address. Anything else has no stand-in and fails.
fn nomad_runtime_stand_ins(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed ${{ in {value}"))
            + start;
        let name = &rest[start + 2..end];
        assert!(
            name.starts_with("NOMAD_ADDR_"),
            "no stand-in for ${{{name}}} in the job's env: add one to this test"
        );
        out.push_str(&format!("127.0.0.1:{}", free_tcp_port()));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Load balancer
// ---------------------------------------------------------------------------

#[test]
fn nginx_load_balancer_config_passes_nginx_t_and_carries_tcp_and_udp() {
    let nginx = system_program("nginx");
    let original = read(&deploy("lb-nginx.conf"));
    let tmp = TempDir::new("deploy-nginx");

    // A gateway in its development setup stands behind the balancer.
    let gateway = GatewayProcess::start(
        &[
            "--data-dir".into(),
            path_str(&tmp.path().join("gw")).into(),
            "run".into(),
        ],
        &[],
        tmp.path(),
    );
    let (lb_https, lb_agent) = (free_tcp_port(), free_tcp_udp_port());

    // The copy: upstream servers at 127.0.0.1 (the gateway's ports), listeners on free
    // loopback ports, and the pid file and error log in the temporary prefix so that
    // nothing under /etc/nginx, /run or /var/log is touched.
    let mut servers = 0;
    let mut listens = [0; 3];
    let mut conf = String::new();
    for line in original.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if indent.is_empty() && (trimmed.starts_with("pid ") || trimmed.starts_with("error_log ")) {
            continue;
        }
        let upstream_server = trimmed
            .strip_prefix("server ")
            .filter(|rest| !rest.trim_start().starts_with('{'));
        let line = if let Some(rest) = upstream_server {
            let addr = rest.split([' ', ';']).next().unwrap();
            let port = match addr.rsplit(':').next().unwrap() {
                "8443" => gateway.public_port,
                "7443" => gateway.agent_port,
                other => panic!("upstream server on unexpected port {other}: {line}"),
            };
            servers += 1;
            line.replacen(addr, &format!("127.0.0.1:{port}"), 1)
        } else if trimmed == "listen 8443;" {
            listens[0] += 1;
            format!("{indent}listen 127.0.0.1:{lb_https};")
        } else if trimmed == "listen 7443;" {
            listens[1] += 1;
            format!("{indent}listen 127.0.0.1:{lb_agent};")
        } else if trimmed == "listen 7443 udp;" {
            listens[2] += 1;
            format!("{indent}listen 127.0.0.1:{lb_agent} udp;")
        } else {
            line.to_owned()
        };
        conf.push_str(&line);
        conf.push('\n');
    }
    assert!(
        servers >= 3,
        "expected upstream servers for 8443, tcp/7443 and udp/7443"
    );
    assert_eq!(
        listens,
        [1, 1, 1],
        "expected `listen 8443;`, `listen 7443;` and `listen 7443 udp;` once each"
    );
    let prefix = tmp.path().join("nginx");
    fs::create_dir_all(prefix.join("logs")).unwrap();
    conf.push_str(&format!(
        "pid {};\nerror_log {} info;\n",
        path_str(&prefix.join("nginx.pid")),
        path_str(&prefix.join("error.log"))
    ));
    let conf_path = prefix.join("nginx.conf");
    write(&conf_path, &conf);
    let nginx_args = |extra: &[&str]| {
        let mut c = Command::new(&nginx);
        c.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
        c.arg("-e").arg(prefix.join("startup.log"));
        c.args(extra);
        c
    };

    let output = run_output(&mut nginx_args(&["-t"]));
    assert!(
        output.status.success(),
        "nginx -t on {}: {}\n{}\n--- config ---\n{conf}",
        conf_path.display(),
        output.status,
        output_text(&output)
    );

    // Run it (one process, in the foreground) and go through it.
    let log = prefix.join("run.log");
    let child = nginx_args(&["-g", "daemon off; master_process off;"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start nginx: {e}"));
    let mut nginx_proc = Process {
        child,
        log: log.clone(),
        name: "nginx",
    };
    nginx_proc.wait_for_port(lb_https);
    let nginx_log = || {
        format!(
            "--- nginx ---\n{}{}",
            read_lossy(&log),
            read_lossy(&prefix.join("error.log"))
        )
    };

    // Users' HTTPS: the certificate that verifies is the gateway's own, so TLS went
    // through untouched and the gateway answered.
    let cacert = tmp.path().join("gw").join("gateway.localhost.crt.pem");
    let code = curl_status("gateway.localhost", lb_https, &cacert);
    assert!(
        code.len() == 3 && code != "000",
        "HTTPS through the balancer: {code}\n{}\n{}",
        nginx_log(),
        gateway.log()
    );

    // Agents over TLS + yamux: a TLS handshake with the agent ALPN through tcp/7443.
    let openssl = program_in_path("openssl");
    let output = run_output(
        Command::new(&openssl)
            .args(["s_client", "-connect", &format!("127.0.0.1:{lb_agent}")])
            .args([
                "-servername",
                "gateway.localhost",
                "-alpn",
                "agent-link-mux/1",
            ])
            .arg("-CAfile")
            .arg(&cacert)
            .arg("-verify_return_error")
            .stdin(Stdio::null()),
    );
    let text = output_text(&output);
    assert!(
        text.contains("ALPN protocol: agent-link-mux/1") && text.contains("Verify return code: 0"),
        "TLS to the agent port through the balancer:\n{text}\n{}\n{}",
        nginx_log(),
        gateway.log()
    );

    // Agents over QUIC: a long-header datagram of an unknown version, 1200 bytes as a
    // client's Initial must be. Only a QUIC server answers it (with Version
    // Negotiation, version 0), so an answer through udp/7443 came from the gateway.
    let reply = quic_version_negotiation(SocketAddr::from((Ipv4Addr::LOCALHOST, lb_agent)));
    assert!(
        reply.is_some(),
        "no QUIC Version Negotiation through udp/{lb_agent} of the balancer\n{}\n{}",
        nginx_log(),
        gateway.log()
    );
    nginx_proc.terminate();
}

/// Sends a QUIC long-header packet with the reserved version 0x?a?a?a?a and returns the
/// Version Negotiation reply, if one comes.
fn quic_version_negotiation(to: SocketAddr) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut packet = vec![0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 8];
    packet.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]); // destination connection id
    packet.push(8);
    packet.extend_from_slice(&[9, 10, 11, 12, 13, 14, 15, 16]); // source connection id
    packet.resize(1200, 0);
    let mut buf = [0u8; 1500];
    for _ in 0..20 {
        socket.send_to(&packet, to).unwrap();
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let reply = &buf[..n];
            // Long header, version 0, and echoing our source id as its destination id.
            if n > 6 && reply[0] & 0x80 != 0 && reply[1..5] == [0, 0, 0, 0] && reply[5] == 8 {
                assert_eq!(&reply[6..14], &[9, 10, 11, 12, 13, 14, 15, 16]);
                return Some(reply.to_vec());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Containerfile
// ---------------------------------------------------------------------------

#[test]
fn containerfile_is_a_multi_stage_non_root_build() {
    // No container engine here, so no build: the instructions are checked as text.
    let instructions = containerfile_instructions();
    let all = |name: &str| -> Vec<String> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let from = all("FROM");
    assert_eq!(
        from.len(),
        2,
        "expected a builder and a runtime stage: {from:?}"
    );
    assert!(
        from[0].starts_with("rust:1-bookworm ") && from[0].to_lowercase().ends_with(" as builder"),
        "builder stage: {}",
        from[0]
    );
    assert_eq!(from[1], "debian:bookworm-slim", "runtime stage");
    let runs = all("RUN");
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --release") && r.contains("--bin gateway")),
        "no `cargo build --release --bin gateway`: {runs:?}"
    );
    assert!(
        runs.iter()
            .any(|r| r.contains("install") && r.contains("ca-certificates")),
        "the runtime image should install ca-certificates"
    );

    // cargo loads the whole workspace: every member must be in the build context.
    let copies = all("COPY");
    for member in workspace_members() {
        assert!(
            copies
                .iter()
                .any(|c| c.split_whitespace().next() == Some(member.as_str())),
            "Cargo.toml's workspace member {member} is not copied into the builder: {copies:?}"
        );
    }
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("--from=builder ") && c.contains("target/release/gateway")),
        "the runtime stage does not copy target/release/gateway from the builder"
    );

    let exposed: Vec<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for port in ["7443/udp", "7443/tcp", "8443/tcp", "9090/tcp"] {
        assert!(
            exposed.iter().any(|e| e == port),
            "EXPOSE lacks {port}: {exposed:?}"
        );
    }
    let user = all("USER");
    let last = user.last().expect("no USER: the gateway would run as root");
    let name = last.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "USER {last} is root");
    // The runtime stage is after the second FROM; USER must be there.
    let second_from = instructions.iter().rposition(|(i, _)| i == "FROM").unwrap();
    assert!(
        instructions[second_from..].iter().any(|(i, _)| i == "USER"),
        "USER is not set in the runtime stage"
    );
    let entrypoint = all("ENTRYPOINT");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].contains("gateway"),
        "ENTRYPOINT should be the gateway: {entrypoint:?}"
    );
    assert_eq!(all("CMD"), vec![r#"["run"]"#.to_owned()]);

    let mut known = gateway_env_names();
    known.extend(FORTHCOMING_GATEWAY_ENV.iter().map(|s| s.to_string()));
    for name in containerfile_env().keys() {
        if name.starts_with("GATEWAY_") {
            assert!(
                known.contains(name),
                "ENV {name} is not read by the gateway"
            );
        }
    }
}

/// (INSTRUCTION, arguments) of deploy/Containerfile, continuation lines joined.
fn containerfile_instructions() -> Vec<(String, String)> {
    let text = read(&deploy("Containerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push((instruction.to_uppercase(), args));
        current.clear();
    }
    out
}

/// The image's ENV, as a container started from it sees it.
fn containerfile_env() -> BTreeMap<String, String> {
    containerfile_instructions()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .flat_map(|(_, args)| {
            args.split_whitespace()
                .map(|kv| {
                    let (k, v) = kv
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV {kv}: use KEY=VALUE"));
                    (k.to_owned(), v.to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn workspace_members() -> Vec<String> {
    let cargo = read(&repo().join("Cargo.toml"));
    let start = cargo.find("members = [").expect("workspace members");
    let end = cargo[start..].find(']').unwrap() + start;
    cargo[start..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('"'))
        .map(|l| l.trim_end_matches(',').trim_matches('"').to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// The gateway binary
// ---------------------------------------------------------------------------

/// The environment variables `gateway run` reads, from its own `--help`.
fn gateway_env_names() -> Vec<String> {
    let output = run_output(Command::new(GATEWAY).args(["run", "--help"]));
    assert!(
        output.status.success(),
        "gateway run --help: {}",
        output_text(&output)
    );
    env_names_in(
        &String::from_utf8_lossy(&output.stdout),
        "[env: ",
        "GATEWAY_",
    )
}

/// The `KNOT_*` variables agent-link reads, from its clap definitions (the agent's
/// binary is not built by this package's tests).
fn agent_env_names() -> Vec<String> {
    let source = read(&repo().join("agent-link/src/agent/config.rs"));
    let names = env_names_in(&source, "env = \"", "KNOT_");
    assert!(
        !names.is_empty(),
        "no env = \"KNOT_...\" in agent-link/src/agent/config.rs"
    );
    names
}

fn env_names_in(text: &str, marker: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices(marker)
        .map(|(i, _)| &text[i + marker.len()..])
        .filter(|rest| rest.starts_with(prefix))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A gateway started on free loopback ports; killed on drop.
struct GatewayProcess {
    process: Process,
    public_port: u16,
    agent_port: u16,
}

impl GatewayProcess {
    /// Starts the gateway with `args`, listeners moved to free loopback ports by
    /// flags (which outrank the environment and the file), and waits until its
    /// public port accepts connections.
    fn start(args: &[String], env: &[(String, String)], dir: &Path) -> GatewayProcess {
        let (agent_port, public_port) = (free_tcp_udp_port(), free_tcp_port());
        let log = unique_path(dir, "gateway.log");
        let child = Self::command(args, env, agent_port, public_port)
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {GATEWAY}: {e}"));
        let mut process = Process {
            child,
            log,
            name: "gateway",
        };
        process.wait_for_port(public_port);
        GatewayProcess {
            process,
            public_port,
            agent_port,
        }
    }

    /// Runs the gateway expecting it to refuse to start; returns its output.
    fn expect_refusal(args: &[String], env: &[(String, String)], dir: &Path) -> String {
        let log = unique_path(dir, "refused.log");
        let child = Self::command(args, env, free_tcp_udp_port(), free_tcp_port())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {GATEWAY}: {e}"));
        let mut process = Process {
            child,
            log,
            name: "gateway",
        };
        let status = process.wait_exit(START_TIMEOUT);
        let text = process.log_text();
        assert!(
            status.is_some_and(|s| !s.success()),
            "the gateway should have refused to start ({status:?}):\n{text}"
        );
        text
    }

    fn command(args: &[String], env: &[(String, String)], agent: u16, public: u16) -> Command {
        let mut command = Command::new(GATEWAY);
        // Only the environment the deployment file gives, not the test runner's.
        for (k, _) in std::env::vars() {
            if k.starts_with("GATEWAY_") {
                command.env_remove(k);
            }
        }
        command.env("RUST_LOG", "info");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command.args(args);
        command.args(["--agent-listen", &format!("127.0.0.1:{agent}")]);
        command.args(["--public-listen", &format!("127.0.0.1:{public}")]);
        // The admin listener defaults to a fixed port: give each gateway its own,
        // unless the deployment file chose one (itself moved to a free port).
        if !env.iter().any(|(k, _)| k == "GATEWAY_ADMIN_LISTEN") {
            command.env(
                "GATEWAY_ADMIN_LISTEN",
                format!("127.0.0.1:{}", free_tcp_port()),
            );
        }
        command.stdin(Stdio::null());
        command
    }

    fn log(&self) -> String {
        format!("--- gateway ---\n{}", self.process.log_text())
    }

    /// An HTTPS request that verifies against `cert` for `domain` gets an answer.
    fn assert_serves_certificate(&self, domain: &str, cert: &Path) {
        let code = curl_status(domain, self.public_port, cert);
        assert!(
            code.len() == 3 && code != "000",
            "https://{domain}:{} with --cacert {}: {code}\n{}",
            self.public_port,
            cert.display(),
            self.log()
        );
    }

    /// SIGHUP, as `systemctl reload` and Nomad's change_signal send it: the gateway
    /// must still be running afterwards (the caller then checks that it serves).
    fn reload(&mut self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.process.child.id().to_string()])
            .status();
        assert!(
            sent.as_ref().is_ok_and(|s| s.success()),
            "kill -HUP: {sent:?}"
        );
        let status = self.process.wait_exit(Duration::from_millis(500));
        assert!(
            status.is_none(),
            "the gateway ended on SIGHUP ({status:?}) instead of reloading\n{}",
            self.log()
        );
    }

    /// SIGTERM, then the gateway must exit successfully within `limit`.
    fn stop_within(&mut self, limit: Duration) {
        let started = Instant::now();
        let status = self.process.terminate();
        assert!(
            status.is_some_and(|s| s.success()) && started.elapsed() <= limit,
            "gateway after SIGTERM: {status:?} after {:?} (limit {limit:?})\n{}",
            started.elapsed(),
            self.log()
        );
    }
}

/// Writes what the configuration names and a deployment provides: the TLS
/// certificate and key for the domain, and the token verification key. Returns the
/// domain.
fn provide_files(
    settings: &BTreeMap<String, String>,
    env: &[(String, String)],
    tmp: &Path,
) -> String {
    let domain = env
        .iter()
        .find(|(k, _)| k == "GATEWAY_DOMAIN")
        .map(|(_, v)| v.clone())
        .or_else(|| settings.get("public.domain").cloned())
        .expect("a domain in the environment or the file");
    let (cert, key) = (&settings["public.cert"], &settings["public.key"]);
    for path in [cert, key] {
        fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
    }
    let openssl = program_in_path("openssl");
    let output = run_output(
        Command::new(&openssl)
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", &format!("/CN={domain}")])
            .args([
                "-addext",
                &format!("subjectAltName=DNS:{domain},DNS:*.{domain}"),
            ])
            .args(["-keyout", key, "-out", cert]),
    );
    assert!(
        output.status.success(),
        "openssl req: {}",
        output_text(&output)
    );

    let public_key = env
        .iter()
        .find(|(k, _)| k == "GATEWAY_PUBLIC_KEY")
        .map(|(_, v)| v.clone())
        .or_else(|| settings.get("auth.public_key").cloned())
        .expect("a public key in the environment or the file");
    let keys = unique_path(tmp, "keys");
    let output = run_output(Command::new(GATEWAY).arg("keygen").arg("--out").arg(&keys));
    assert!(
        output.status.success(),
        "gateway keygen: {}",
        output_text(&output)
    );
    fs::create_dir_all(Path::new(&public_key).parent().unwrap()).unwrap();
    fs::copy(keys.join("verify-key.pem"), &public_key).unwrap();
    domain
}

/// `curl` to https://DOMAIN:PORT/ resolved to 127.0.0.1, trusting only `cacert`;
/// returns the HTTP status, "000" when no answer came.
fn curl_status(domain: &str, port: u16, cacert: &Path) -> String {
    let curl = program_in_path("curl");
    let output = run_output(
        Command::new(&curl)
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(["--resolve", &format!("{domain}:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(cacert)
            .arg(format!("https://{domain}:{port}/")),
    );
    let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if code.len() == 3 && code != "000" {
        code
    } else {
        format!("000 ({})", output_text(&output))
    }
}

/// The HTTP status of a plain GET, "000 (...)" when no answer came.
fn http_status(url: &str) -> String {
    let curl = program_in_path("curl");
    let output = run_output(Command::new(&curl).args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        url,
    ]));
    let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if code.len() == 3 && code != "000" {
        code
    } else {
        format!("000 ({})", output_text(&output))
    }
}

// ---------------------------------------------------------------------------
// Files, settings, processes
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn deploy(name: &str) -> PathBuf {
    repo().join("deploy").join(name)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A new path in `dir` that no earlier call returned.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    dir.join(format!(
        "{}-{name}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// `value` with a leading `from` prefix replaced by the directory `to`.
fn relocate(value: &str, relocations: &[(&str, PathBuf)]) -> String {
    for (from, to) in relocations {
        if let Some(rest) = value.strip_prefix(from) {
            let to = path_str(to);
            return if from.ends_with('/') {
                format!("{to}/{rest}")
            } else {
                format!("{to}{rest}")
            };
        }
    }
    value.to_owned()
}

/// Every quoted string in `text` that starts with a relocated prefix, moved.
fn relocate_quoted(text: &str, relocations: &[(&str, PathBuf)]) -> String {
    let mut out = text.to_owned();
    for (from, to) in relocations {
        let to = path_str(to);
        let to = if from.ends_with('/') {
            format!("{to}/")
        } else {
            to.to_owned()
        };
        out = out.replace(&format!("\"{from}"), &format!("\"{to}"));
    }
    out
}

/// The quoted string settings of a TOML file, as `section.key` (comments skipped).
/// Enough for the paths and the domain; the gateway itself parses the file.
fn toml_strings(text: &str) -> BTreeMap<String, String> {
    let mut section = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = format!("{name}.");
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            if let Some(quoted) = value.strip_prefix('"') {
                let end = quoted.find('"').expect("closing quote");
                out.insert(format!("{section}{}", key.trim()), quoted[..end].to_owned());
            }
        }
    }
    out
}

/// A systemd unit's settings: key → values in order (comments skipped).
fn unit_settings(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            out.entry(key.trim().to_owned())
                .or_default()
                .push(value.trim().to_owned());
        }
    }
    out
}

/// The unit's TimeoutStopSec (seconds, or with an `s` or `min` suffix).
fn stop_timeout(unit: &BTreeMap<String, Vec<String>>) -> Duration {
    let value = unit
        .get("TimeoutStopSec")
        .and_then(|v| v.last())
        .expect("TimeoutStopSec is set");
    let (number, scale) = if let Some(n) = value.strip_suffix("min") {
        (n, 60)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1)
    } else {
        (value.as_str(), 1)
    };
    Duration::from_secs(
        number
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("TimeoutStopSec={value}: {e}"))
            * scale,
    )
}

/// A program on PATH, or a failure that says how to install it.
fn program_in_path(name: &str) -> PathBuf {
    find_program(name, &[]).unwrap_or_else(|| panic!("{name} is not installed; {INSTALL_HINT}"))
}

/// As [`program_in_path`], also looking in the sbin directories that ordinary users'
/// PATH often lacks.
fn system_program(name: &str) -> PathBuf {
    find_program(
        name,
        &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"],
    )
    .unwrap_or_else(|| panic!("{name} is not installed; {INSTALL_HINT}"))
}

fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn run_output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A loopback TCP port that was free a moment ago.
fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port free for both TCP and UDP (the agent listener binds both).
fn free_tcp_udp_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both TCP and UDP");
}

/// A child process with its log; killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Process {
    fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// Waits until 127.0.0.1:`port` accepts; fails with the log if the process exits.
    fn wait_for_port(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                self.name,
                self.log_text()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// SIGTERM and wait up to a minute; `None` if it did not exit.
    fn terminate(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(60))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory under `std::env::temp_dir()`, removed on drop. Mode 0700: it holds
/// private keys.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
