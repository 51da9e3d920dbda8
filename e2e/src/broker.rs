//! A private ActiveMQ for tests, run by `scripts/activemq.sh`.
//!
//! Invariant: a broker started here is stopped when its handle drops, and by
//! the script's watchdog if the test process dies first.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::process::{alive, send_signal};

/// One private broker instance.
pub struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    /// A KahaDB folder shared with another instance (a master/slave pair).
    shared_store: Option<PathBuf>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/activemq.sh")
}

impl Broker {
    /// Starts a broker in a fresh folder on a port the kernel chooses (it
    /// binds port 0, and the script reads the port back from its log, so no
    /// other process can take the port first) and waits until it listens.
    pub fn start() -> Broker {
        let dir = tempfile::Builder::new().prefix("orderflow-broker-").tempdir().expect("temp dir");
        let mut broker = Broker { dir, port: 0, shared_store: None };
        broker.launch(true);
        let port =
            std::fs::read_to_string(broker.dir.path().join("broker.port")).expect("the script writes broker.port");
        broker.port = port.trim().parse().expect("a port number in broker.port");
        broker
    }

    /// A master/slave pair on one KahaDB folder (`store`, which must outlive
    /// both): the first listens at once; the second waits for the store's lock
    /// and listens only when the first has died.
    pub fn shared_store_pair(store: &std::path::Path) -> (Broker, Broker) {
        let make = || {
            let dir = tempfile::Builder::new().prefix("orderflow-broker-").tempdir().expect("temp dir");
            Broker { dir, port: crate::free_port(), shared_store: Some(store.to_path_buf()) }
        };
        let (master, standby) = (make(), make());
        master.start_again();
        standby.launch(false);
        (master, standby)
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("broker.pid")).ok()?.trim().parse().ok()
    }

    /// True while the broker accepts connections on its port.
    pub fn listening(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// `tcp://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Starts the (stopped) broker again on the same folder and port: persistent messages survive.
    /// (The port is fixed from here on, so that clients find it again.)
    pub fn start_again(&self) {
        self.launch(true);
    }

    fn launch(&self, wait_for_port: bool) {
        let mut command = Command::new("bash");
        if let Some(store) = &self.shared_store {
            command.env("ACTIVEMQ_KAHADB", store);
        }
        command.env("ACTIVEMQ_WAIT_FOR_PORT", if wait_for_port { "1" } else { "0" });
        let status = command
            .arg(script())
            .args(["start", &self.dir.path().display().to_string(), &self.port.to_string()])
            .arg(std::process::id().to_string())
            .status()
            .expect("running scripts/activemq.sh");
        assert!(status.success(), "the broker did not start (see {}/broker.log)", self.dir.path().display());
    }

    /// Freezes the broker (SIGSTOP): its connections stay open but it says nothing.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// Kills the broker outright (SIGKILL, as a power cut would) and waits
    /// until the process is gone; [`Broker::start_again`] recovers its store.
    pub async fn kill(&self) {
        let pid = self.pid().expect("broker pid file");
        self.signal("KILL");
        let gone = async || (!alive(pid)).then_some(());
        crate::wait_for("the killed broker to exit", std::time::Duration::from_secs(30), gone).await
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("broker pid file");
        send_signal(pid, signal).expect("signal the broker");
    }

    /// Stops the broker (SIGTERM, then SIGKILL after 15 s) and waits for the process to end.
    pub fn stop(&self) {
        let _ = Command::new("bash").arg(script()).args(["stop", &self.dir.path().display().to_string()]).status();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The run's shared broker: `TEST_BROKER_URL` when the test command started
/// one, else one private broker per test process.
pub fn shared_broker_url() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| match std::env::var("TEST_BROKER_URL") {
            Ok(url) => url,
            Err(_) => {
                // Kept for the whole process; the script's watchdog stops it when we exit.
                let broker = Box::leak(Box::new(Broker::start()));
                broker.url()
            }
        })
        .clone()
}
