//! A fleet configured through etcd: three `sluice run` processes take their
//! routes from Debian's `etcd`, acknowledge or refuse each revision, keep
//! serving without etcd and catch up when it is back; `sluice fleet`
//! pushes, lists and rolls back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::{Etcd, Upstream};

use crate::instance::Sluice;
use crate::pki::Pki;

/// Three instances of one fleet, each with its own snapshot folder.
struct Fleet {
    instances: Vec<Sluice>,
    _cache: tempfile::TempDir,
}

impl Fleet {
    async fn start(etcd: &Etcd, extra: &str) -> Fleet {
        let cache = tempfile::tempdir().unwrap();
        let mut instances = Vec::new();
        for i in 0..3 {
            instances.push(Sluice::start(&member(etcd, i, extra), cache.path()).await);
        }
        Fleet {
            instances,
            _cache: cache,
        }
    }

    /// The first instance's file, which `sluice fleet` reads `[fleet]` from.
    fn config(&self) -> std::path::PathBuf {
        self.instances[0].config()
    }

    /// Wait until every instance answers `/` from upstream `id`.
    async fn all_serve(&self, id: &str) {
        for gw in &self.instances {
            serves(gw, id).await;
        }
    }
}

/// `[fleet]` for instance `i` on `etcd`.
fn member(etcd: &Etcd, i: usize, extra: &str) -> String {
    format!(
        "[fleet]\nendpoints = [\"{}\"]\nid = \"gw-{i}\"\nsnapshot_dir = \"snapshot\"\nlease = \"3s\"\n{extra}\n",
        etcd.url()
    )
}

/// A fleet configuration: everything to upstream `up`.
fn routes_to(up: &Upstream) -> String {
    format!(
        "[upstreams.up]\ntargets = [\"{}\"]\n[[routes]]\nupstream = \"up\"\n",
        up.addr
    )
}

/// Wait (up to 10 s) until `gw` answers `/` from upstream `id`.
async fn serves(gw: &Sluice, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = gw.get("/", &[]).await;
        if reply.header("x-upstream") == id {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never served from `{id}` ({}):\n{}",
            reply.status,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway's own etcd client, for what an operator does with etcdctl.
fn client(etcd: &Etcd) -> sluice_control::fleet::Etcd {
    sluice_control::fleet::Etcd::new(sluice_control::fleet::EtcdOptions {
        endpoints: vec![etcd.url()],
        ca: None,
        identity: None,
        user: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap()
}

/// `sluice fleet -c <config> <args>`: whether it succeeded, and what it said.
fn fleet(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["fleet", "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// Push `text` (written to a file); the revision written.
fn push(config: &Path, text: &str, args: &[&str]) -> Result<i64, String> {
    let file = config.with_file_name(format!("push-{}.toml", rand_suffix()));
    std::fs::write(&file, text).unwrap();
    let mut all = vec!["push", file.to_str().unwrap()];
    all.extend(args);
    let (ok, said) = fleet(config, &all);
    match ok {
        true => Ok(said
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision in: {said}"))),
        false => Err(said),
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Wait (up to 10 s) until `sluice fleet status` says `want` about every instance.
async fn status_says(config: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, said) = fleet(config, &["status"]);
        if said.matches(want).count() == 3 {
            return said;
        }
        assert!(Instant::now() < deadline, "want `{want}` thrice:\n{said}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_live_on_every_instance_and_each_acknowledges_it() {
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let fleet_ = Fleet::start(&etcd, "").await;
    // Nothing pushed yet: listening, not ready.
    for gw in &fleet_.instances {
        assert_eq!(gw.admin("/readyz").await.status, 503);
        assert_eq!(gw.get("/", &[]).await.status, 404);
    }
    let config = fleet_.config();
    let first = push(&config, &routes_to(&a), &[]).unwrap();
    fleet_.all_serve("a").await;
    for gw in &fleet_.instances {
        assert_eq!(gw.admin("/readyz").await.status, 200);
        assert_eq!(gw.metric("sluice_fleet_revision").await, first as f64);
    }
    let said = status_says(&config, &format!("revision {first:>6}  up to date")).await;
    assert!(
        said.contains(&format!("the fleet's configuration: revision {first}")),
        "{said}"
    );

    let second = push(&config, &routes_to(&b), &[]).unwrap();
    assert!(second > first);
    fleet_.all_serve("b").await;
    status_says(&config, &format!("revision {second:>6}  up to date")).await;
    // The admin API shows the fleet too.
    let view = fleet_.instances[1].admin("/fleet").await.json();
    assert_eq!(view["revision"], second);
    let ids: Vec<&str> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gw-0", "gw-1", "gw-2"]);

    let (ok, history) = fleet(&config, &["history"]);
    assert!(ok, "{history}");
    assert!(history.contains(&format!("{first:>9}     1")), "{history}");
    assert!(history.contains(&format!("{second:>9}     2")), "{history}");
    let (ok, said) = fleet(&config, &["rollback", &first.to_string()]);
    assert!(ok, "{said}");
    fleet_.all_serve("a").await;
    let (_, history) = fleet(&config, &["history"]);
    assert!(
        history.contains(&format!("rollback to {first}")),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_push_is_refused_by_every_instance_and_the_old_one_keeps_serving() {
    let etcd = Etcd::start().await;
    let a = Upstream::start("a").await;
    let fleet_ = Fleet::start(&etcd, "").await;
    let config = fleet_.config();
    let good = push(&config, &routes_to(&a), &[]).unwrap();
    fleet_.all_serve("a").await;

    // What does not validate is refused before it reaches etcd.
    let unknown = routes_to(&a).replace("upstream = \"up\"", "upstream = \"nope\"");
    let said = push(&config, &unknown, &[]).unwrap_err();
    assert!(
        said.contains("nothing pushed") && said.contains("routes[0].upstream"),
        "{said}"
    );
    let said = push(&config, "[admin]\naddress = \"0.0.0.0:1\"\n", &[]).unwrap_err();
    assert!(
        said.contains("belongs to each instance's own file"),
        "{said}"
    );

    // What only an instance can find out: a plugin rejecting its configuration.
    let rejected = format!(
        "{}[plugins.limit]\npath = \"{}\"\n[[routes.filters]]\nplugin = \"limit\"\nconfig = {{ capacity = \"lots\" }}\n",
        routes_to(&a),
        sluice_tests::plugin("rate-limit")
    );
    let bad = push(&config, &rejected, &[]).unwrap();
    let said = status_says(&config, &format!("REFUSED revision {bad}")).await;
    assert!(
        said.contains(&format!("etcd:/sluice/config@{bad}")),
        "names the key: {said}"
    );
    assert!(
        said.contains("routes[0].filters[0]"),
        "and the field: {said}"
    );
    assert!(
        said.contains(&format!("revision {good:>6}")),
        "the old one serves: {said}"
    );
    for gw in &fleet_.instances {
        assert_eq!(gw.get("/", &[]).await.header("x-upstream"), "a");
        assert_eq!(gw.metric("sluice_fleet_refused_total").await, 1.0);
    }

    // A plugin digest that cannot be pulled: refused by each, all serve on.
    let digest = format!("sha256:{}", "0".repeat(64));
    let unpullable = format!(
        "{}[plugins.gone]\npath = \"oci://127.0.0.1:1/plugins/gone@{digest}\"\n",
        routes_to(&a)
    );
    let gone = push(&config, &unpullable, &[]).unwrap();
    let said = status_says(&config, &format!("REFUSED revision {gone}")).await;
    assert!(said.contains("plugins.gone.path"), "{said}");
    for gw in &fleet_.instances {
        assert_eq!(gw.get("/", &[]).await.header("x-upstream"), "a");
        assert_eq!(gw.admin("/readyz").await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_every_instance_serves_and_catches_up_when_it_is_back() {
    let mut etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut fleet_ = Fleet::start(&etcd, "").await;
    let config = fleet_.config();
    push(&config, &routes_to(&a), &[]).unwrap();
    fleet_.all_serve("a").await;

    etcd.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for gw in &fleet_.instances {
        assert_eq!(gw.get("/", &[]).await.header("x-upstream"), "a");
    }
    // Restarted while etcd is down: it serves its snapshot, and is ready.
    fleet_.instances[2].restart().await;
    serves(&fleet_.instances[2], "a").await;
    assert_eq!(fleet_.instances[2].admin("/readyz").await.status, 200);
    assert!(fleet_.instances[2].log().contains("from the snapshot"));
    // A new instance with no snapshot waits, not ready, serving nothing.
    let cache = tempfile::tempdir().unwrap();
    let fresh = Sluice::start(&member(&etcd, 3, ""), cache.path()).await;
    assert_eq!(fresh.admin("/readyz").await.status, 503);
    assert_eq!(fresh.get("/", &[]).await.status, 404);

    etcd.restart().await;
    serves(&fresh, "a").await;
    assert_eq!(fresh.admin("/readyz").await.status, 200);
    push(&config, &routes_to(&b), &[]).unwrap();
    fleet_.all_serve("b").await;
    serves(&fresh, "b").await;
    // etcd's absence is said once per outage, not per retry.
    let log = fleet_.instances[0].log();
    assert!(log.matches("trying again").count() <= 2, "{log}");
    assert!(log.contains("etcd answers again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_costs_one_full_read() {
    let mut etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let fleet_ = Fleet::start(&etcd, "").await;
    let config = fleet_.config();
    let gw = &fleet_.instances[0];
    let mut last = 0;
    for up in [&a, &b, &a] {
        last = push(&config, &routes_to(up), &[]).unwrap();
    }
    fleet_.all_serve("a").await;
    let reads = gw.metric("sluice_fleet_reads_total").await;
    // etcd goes, compacts its history while the instances cannot watch, and
    // comes back: each instance's next watch would start from a revision
    // that is gone.
    etcd.kill();
    let admin = client(&etcd);
    etcd.restart().await;
    let newer = push(&config, &routes_to(&b), &[]).unwrap();
    admin.compact(newer).await.unwrap();
    fleet_.all_serve("b").await;
    let after = gw.metric("sluice_fleet_reads_total").await - reads;
    assert!(
        (1.0..=3.0).contains(&after),
        "{after} full reads for one outage"
    );
    // And a watcher that asks for the compacted history hears so.
    match admin
        .watch("/sluice/config", last)
        .await
        .unwrap()
        .next()
        .await
    {
        Ok(sluice_control::fleet::WatchEvent::Compacted(at)) => assert_eq!(at, newer),
        _ => panic!("a watch from a compacted revision is told it is compacted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_pushes_from_the_same_revision_one_wins_and_the_other_is_refused() {
    let etcd = Etcd::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let fleet_ = Fleet::start(&etcd, "").await;
    let config = fleet_.config();
    let base = push(&config, &routes_to(&a), &[]).unwrap();
    let expect = base.to_string();
    let (config_a, config_b) = (config.clone(), config.clone());
    let (text_a, text_b) = (routes_to(&a), routes_to(&b));
    let (expect_a, expect_b) = (expect.clone(), expect.clone());
    let one = std::thread::spawn(move || push(&config_a, &text_a, &["--expect", &expect_a]));
    let two = std::thread::spawn(move || push(&config_b, &text_b, &["--expect", &expect_b]));
    let results = [one.join().unwrap(), two.join().unwrap()];
    let won: Vec<&i64> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{results:?}");
    let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(
        lost.contains("moved") && lost.contains("nothing pushed"),
        "{lost}"
    );
    // --force pushes over it.
    push(&config, &routes_to(&b), &["--expect", &expect, "--force"]).unwrap();
    fleet_.all_serve("b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate_and_etcds_own_users() {
    let pki = Pki::new();
    let ca_file = pki.ca();
    let (server_cert, server_key) = pki.issue("localhost", true);
    // etcd's JSON gateway refuses a client certificate with a Common Name
    // (it would not authenticate as that user there): the name goes in the SAN.
    let (client_cert, client_key) = pki.issue("gateway", false);
    let etcd = Etcd::start_with(
        "https",
        &[
            "--cert-file",
            &server_cert,
            "--key-file",
            &server_key,
            "--trusted-ca-file",
            &ca_file,
            "--client-cert-auth",
        ],
    )
    .await;
    // An operator turns etcd's users on: root, and `sluice` with the fleet's keys.
    let b64 = |s: &str| base64_encode(s.as_bytes());
    let calls = [
        ("/v3/auth/role/add", r#"{"name":"root"}"#.to_owned()),
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#.to_owned(),
        ),
        ("/v3/auth/role/add", r#"{"name":"fleet"}"#.to_owned()),
        (
            "/v3/auth/role/grant",
            format!(
                r#"{{"name":"fleet","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
                b64("/sluice/"),
                b64("/sluice0")
            ),
        ),
        (
            "/v3/auth/user/add",
            r#"{"name":"sluice","password":"fleetpw"}"#.to_owned(),
        ),
        (
            "/v3/auth/user/grant",
            r#"{"user":"sluice","role":"fleet"}"#.to_owned(),
        ),
        ("/v3/auth/enable", "{}".to_owned()),
    ];
    for (path, body) in calls {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--fail-with-body",
                "--cacert",
                &ca_file,
                "--cert",
                &client_cert,
                "--key",
                &client_key,
            ])
            .args(["-d", &body, &format!("{}{path}", etcd.url())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let password = pki.file("etcd-password", "fleetpw\n");
    let tls = format!(
        "ca = \"{ca_file}\"\ncert = \"{client_cert}\"\nkey = \"{client_key}\"\n\
         username = \"sluice\"\npassword_file = \"{password}\""
    );
    let a = Upstream::start("a").await;
    let fleet_ = Fleet::start(&etcd, &tls).await;
    let config = fleet_.config();
    let revision = push(&config, &routes_to(&a), &[]).unwrap();
    fleet_.all_serve("a").await;
    status_says(&config, &format!("revision {revision:>6}  up to date")).await;

    // A wrong password: the push is refused by etcd, and says so.
    std::fs::write(&password, "guess\n").unwrap();
    let said = push(&config, &routes_to(&a), &[]).unwrap_err();
    assert!(said.contains("authenticating as `sluice`"), "{said}");
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
