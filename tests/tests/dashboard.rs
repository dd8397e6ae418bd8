//! The web dashboard in a real browser: a real coordinator and agents, a campaign whose steps
//! wait on files this test creates, and headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven over WebDriver. The page loads from a one-time login link; the
//! campaign's progress changes on screen without a reload; an operator pauses it with the
//! page's button (audited with their name); a viewer gets no button and a 403 when posting
//! anyway. A screenshot is kept in `target/test-artifacts/dashboard.png`.
//!
//! The browser runs with `--ignore-certificate-errors` because the dashboard's certificate is
//! the fleet CA's, which this throwaway browser profile does not trust; the test still checks
//! that the dashboard answers only over TLS (the page's origin is `https://`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use pitcrew_tests::{bin, bin_dir, free_port, start_fleet, wait_for};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and the browsers it starts, in their own process group, killed with it.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        let port = free_port();
        let file = std::fs::File::create(log).expect("chromedriver log");
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        wait_for("chromedriver to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and every browser process it started. Its group id
        // is its own pid (a group of its own); never a pid below 2, which would be everyone.
        let id = i32::try_from(self.child.id()).unwrap_or(0);
        if id > 1 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(id),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

/// A fresh headless browser session with its own profile (no cookies shared).
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // The dashboard's certificate is the fleet CA's; this profile does not trust it.
                "--ignore-certificate-errors",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// The text of the element `css`, or None while there is none.
async fn text(client: &Client, css: &str) -> Option<String> {
    let element = client.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A one-time login link for the operator whose certificate `env` names.
fn login_url(env: &[(String, String)]) -> String {
    let out = Command::new(bin("pitcrew"))
        .args(["dashboard", "-o", "json"])
        .envs(env.iter().cloned())
        .output()
        .expect("running pitcrew dashboard");
    let login: Value = serde_json::from_str(&ok(&out, "pitcrew dashboard")).unwrap();
    login["url"].as_str().expect("a url").to_owned()
}

/// Where the screenshot is kept: `target/test-artifacts/` beside the build's binaries.
fn artifacts() -> PathBuf {
    let dir = bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir
}

#[test]
fn the_dashboard_shows_a_campaign_live_lets_an_operator_pause_it_and_a_viewer_only_look() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        // .ci/run installs both, so CI always runs this test.
        assert!(
            std::env::var_os("CI").is_none(),
            "{CHROMIUM} and {CHROMEDRIVER} are missing (apt-get install chromium chromium-driver)"
        );
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} is missing");
        return;
    }
    let (c, agents) = start_fleet(
        &[("w1", "worker"), ("w2", "worker")],
        "[policy]\nexec = [[\"/bin/sh\", \"-c\"]]\n",
    );
    let work = tempfile::tempdir().unwrap();
    let gates = work.path().join("gates");
    std::fs::create_dir(&gates).unwrap();
    // Each host's first step waits until this test creates its file: the campaign moves only
    // when the test says so.
    let file = work.path().join("slow.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"slow\"\n[concurrency]\nworker = 1\n\n\
             [[steps]]\nname = \"gate\"\naction = \"exec\"\n\
             argv = [\"/bin/sh\", \"-c\", \"while [ ! -e {gates}/go-{{{{host.hostname}}}} ]; do sleep 0.1; done\"]\ntimeout = \"5m\"\n\n\
             [[steps]]\nname = \"after\"\naction = \"exec\"\nargv = [\"/bin/sh\", \"-c\", \"true\"]\n",
            gates = gates.display()
        ),
    )
    .unwrap();
    let id = ok(
        &c.cli(&["campaign", "run", file.to_str().unwrap()]),
        "campaign run",
    )
    .trim()
    .to_owned();
    let viewer_dir = work.path().join("vera");
    ok(
        &c.cli(&[
            "operator",
            "add",
            "vera",
            "--role",
            "viewer",
            "--out",
            viewer_dir.to_str().unwrap(),
        ]),
        "operator add vera",
    );
    let mut viewer_env = c.operator_env();
    for (name, value) in viewer_env.iter_mut() {
        match name.as_str() {
            "PITCREW_CERT" => *value = viewer_dir.join("vera.crt").display().to_string(),
            "PITCREW_KEY" => *value = viewer_dir.join("vera.key").display().to_string(),
            _ => {}
        }
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    macro_rules! rt {
        ($e:expr) => {
            runtime.block_on($e)
        };
    }
    let driver = Driver::start(&work.path().join("chromedriver.log"));

    // The admin (role admin, so an operator) signs in with a one-time link.
    let admin = rt!(browser(&driver, &work.path().join("profile-admin")));
    let url = login_url(&c.operator_env());
    assert!(
        url.starts_with(&format!(
            "https://127.0.0.1:{}/login?token=",
            c.dashboard_port
        )),
        "{url}"
    );
    runtime.block_on(admin.goto(&url)).unwrap();
    // The login page moves on to the fleet page, which lists the campaign and both hosts.
    let fleet = wait_for("the fleet page to list the campaign and the hosts", || {
        let campaigns = rt!(text(&admin, "#campaigns"))?;
        let hosts = rt!(text(&admin, "#hosts"))?;
        (campaigns.contains(&id) && hosts.contains("w1") && hosts.contains("w2")).then_some(hosts)
    });
    assert!(fleet.contains("cluster=c1"), "{fleet}");
    // A link used once does not sign in again.
    let reused = rt!(browser(&driver, &work.path().join("profile-reuse")));
    runtime.block_on(reused.goto(&url)).unwrap();
    let page = wait_for("the reused link's answer", || rt!(text(&reused, "body")));
    assert!(page.contains("unknown, used or expired"), "{page}");
    runtime.block_on(reused.close()).unwrap();

    // The campaign's live view: w1 waits in its first step.
    let page_url = format!("https://127.0.0.1:{}/campaigns/{id}", c.dashboard_port);
    runtime.block_on(admin.goto(&page_url)).unwrap();
    wait_for("the campaign's page to show w1 in its first step", || {
        let progress = rt!(text(&admin, "#progress"))?;
        let hosts = rt!(text(&admin, "#campaign-hosts"))?;
        (progress == "0 of 4 steps done" && hosts.contains("gate")).then_some(())
    });
    assert_eq!(
        rt!(text(&admin, "#campaign-state")).as_deref(),
        Some("running")
    );
    // A mark in the page's memory: it survives only if the page is never reloaded.
    runtime
        .block_on(admin.execute("window.pitcrewMark = 'kept'; return true;", vec![]))
        .unwrap();

    // Let w1 through: its two steps finish, w2 starts and waits; the page follows by itself.
    std::fs::write(gates.join("go-w1"), "").unwrap();
    wait_for("the page to show w1's steps done without a reload", || {
        let progress = rt!(text(&admin, "#progress"))?;
        (progress == "2 of 4 steps done").then_some(())
    });
    let mark = runtime
        .block_on(admin.execute("return window.pitcrewMark || null;", vec![]))
        .unwrap();
    assert_eq!(mark, json!("kept"), "the page was reloaded");
    let origin = runtime
        .block_on(admin.execute("return location.origin;", vec![]))
        .unwrap();
    assert_eq!(
        origin,
        json!(format!("https://127.0.0.1:{}", c.dashboard_port))
    );

    // The operator pauses it from the page.
    let pause = runtime
        .block_on(admin.find(Locator::Css("#pause")))
        .expect("a pause button for an operator");
    runtime.block_on(pause.click()).unwrap();
    wait_for("the page to show the campaign paused", || {
        (rt!(text(&admin, "#campaign-state"))? == "paused").then_some(())
    });
    wait_for("the coordinator to hold the campaign paused", || {
        (c.cli_json(&["campaign", "show", &id])["state"] == "paused").then_some(())
    });
    assert!(
        runtime
            .block_on(admin.find(Locator::Css("#resume")))
            .is_ok(),
        "a paused campaign offers Resume"
    );
    let screenshot = runtime.block_on(admin.screenshot()).unwrap();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG screenshot");
    let kept = artifacts().join("dashboard.png");
    std::fs::write(&kept, &screenshot).unwrap();
    eprintln!("screenshot kept in {}", kept.display());
    // Audited with the operator's name, as a pause through the CLI would be.
    let events = c.cli_json(&["events", "--campaign", &id]);
    let audited = events.as_array().unwrap().iter().any(|e| {
        e["actor"] == "admin" && e["message"].as_str().is_some_and(|m| m.contains("paus"))
    });
    assert!(audited, "no audit of the pause by admin: {events:#}");

    // A host's page: its event log, with the steps the campaign ran on it.
    let w1 = &agents[0].machine_id;
    rt!(admin.goto(&format!(
        "https://127.0.0.1:{}/hosts/{w1}",
        c.dashboard_port
    )))
    .unwrap();
    wait_for("w1's page to show its event log", || {
        let log = rt!(text(&admin, "#host-events"))?;
        (log.contains("gate") && log.contains("after")).then_some(())
    });
    // The fleet page, filtered: the held host only.
    rt!(admin.goto(&format!(
        "https://127.0.0.1:{}/?state=maintenance",
        c.dashboard_port
    )))
    .unwrap();
    let held = wait_for("the fleet page filtered on maintenance", || {
        let hosts = rt!(text(&admin, "#hosts"))?;
        let holders = rt!(text(&admin, "#holders"))?;
        (hosts.contains("w2") && holders.contains("w2")).then_some(hosts)
    });
    assert!(!held.contains("w1"), "{held}");
    std::fs::write(
        artifacts().join("dashboard-fleet.png"),
        rt!(admin.screenshot()).unwrap(),
    )
    .unwrap();

    // The compliance page: w1 has the campaign's success, w2 (held, not done) has none yet;
    // each host's agent version is the one it reported.
    rt!(admin.goto(&format!(
        "https://127.0.0.1:{}/compliance",
        c.dashboard_port
    )))
    .unwrap();
    let w2 = &agents[1].machine_id;
    let (w1_row, w2_row) = wait_for("the compliance page to show both hosts", || {
        let w1_row = rt!(text(&admin, &format!("#compliance tr[data-host='{w1}']")))?;
        let w2_row = rt!(text(&admin, &format!("#compliance tr[data-host='{w2}']")))?;
        w1_row.contains("slow").then_some((w1_row, w2_row))
    });
    let version = env!("CARGO_PKG_VERSION");
    assert!(w1_row.contains(version), "w1's agent version: {w1_row}");
    assert!(w2_row.contains(version), "w2's agent version: {w2_row}");
    assert!(
        w2_row.contains("never") && !w2_row.contains("slow"),
        "w2 has not succeeded yet: {w2_row}"
    );
    std::fs::write(
        artifacts().join("dashboard-compliance.png"),
        rt!(admin.screenshot()).unwrap(),
    )
    .unwrap();

    // A viewer sees the campaign but no controls, and is refused if they post anyway.
    let viewer = rt!(browser(&driver, &work.path().join("profile-viewer")));
    runtime
        .block_on(viewer.goto(&login_url(&viewer_env)))
        .unwrap();
    wait_for("the viewer's fleet page", || {
        rt!(text(&viewer, "#campaigns"))?
            .contains(&id)
            .then_some(())
    });
    assert!(
        rt!(text(&viewer, "#who"))
            .unwrap_or_default()
            .contains("vera (viewer)")
    );
    runtime.block_on(viewer.goto(&page_url)).unwrap();
    wait_for("the viewer's campaign page", || {
        (rt!(text(&viewer, "#campaign-state"))? == "paused"
            && rt!(text(&viewer, "#progress"))? == "2 of 4 steps done")
            .then_some(())
    });
    let buttons = runtime
        .block_on(viewer.find_all(Locator::Css("#controls button, #campaign-hosts button")))
        .unwrap();
    assert!(buttons.is_empty(), "a viewer was shown controls");
    let answer = runtime
        .block_on(viewer.execute_async(
            r#"const done = arguments[arguments.length - 1];
               const url = arguments[0];
               fetch("/api/me").then((r) => r.json())
                 .then((me) => fetch(url, { method: "POST", headers: { "X-Pitcrew-Csrf": me.csrf } }))
                 .then((r) => r.json().then((body) => done({ status: r.status, body })));"#,
            vec![json!(format!("/api/campaigns/{id}/resume"))],
        ))
        .unwrap();
    assert_eq!(answer["status"], 403, "{answer}");
    assert!(
        answer["body"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("role viewer")),
        "{answer}"
    );
    assert_eq!(c.cli_json(&["campaign", "show", &id])["state"], "paused");

    runtime.block_on(viewer.close()).unwrap();
    runtime.block_on(admin.close()).unwrap();
    drop(driver);
    drop(agents);
}
