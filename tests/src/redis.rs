//! Real `redis-server` processes for tests: one alone, or a Redis Cluster of three masters.
//! The Debian package provides `redis-server` and `redis-cli` (`scripts/test` installs it).
//! Every process is killed (SIGKILL) and reaped when its handle is dropped; waits are bounded
//! and panic with what did not happen.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a process may take to accept connections, or a cluster to say it is ok.
const WAIT: Duration = Duration::from_secs(10);

/// Times a process may fail to take its port (someone else took it first) before a test gives up.
const ATTEMPTS: usize = 10;

/// A free TCP port on 127.0.0.1: free when asked, and never handed out twice by this process
/// (the OS may still give it to someone else before it is bound: the harness then tries again).
pub fn free_port() -> u16 {
    static GIVEN: parking_lot::Mutex<Vec<u16>> = parking_lot::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind a free port on 127.0.0.1");
        let mut given = GIVEN.lock();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Starts a redis-server on `port` and waits (bounded) until it says it accepts connections:
/// its own log line on stdout, so another process that took the port first is not mistaken for
/// it. `None` when it exited instead: the port was taken. Its later log lines are read and
/// dropped on a thread of their own, so that it never blocks on a full pipe.
fn try_spawn(port: u16, extra: &[std::ffi::OsString]) -> Option<Child> {
    use std::io::BufRead;
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server)");
    let stdout = child.stdout.take().expect("redis-server's stdout is piped");
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("Ready to accept connections")
                && let Some(tx) = ready_tx.take()
            {
                let _ = tx.send(());
            }
        }
        // The end of its stdout: it exited (ready_tx dropped here tells so if it never was).
    });
    match ready.recv_timeout(WAIT) {
        Ok(()) => Some(child),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let _ = child.wait();
            None
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server on port {port} did not start within {WAIT:?}");
        }
    }
}

/// A redis-server on `port` (that port, tried again a few times while someone else holds it).
fn spawn(port: u16, extra: &[std::ffi::OsString]) -> Child {
    for _ in 0..ATTEMPTS {
        if let Some(child) = try_spawn(port, extra) {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis-server could not take port {port}");
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One `redis-server` on a free port (or a given one), without persistence.
#[derive(Debug)]
pub struct RedisProcess {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisProcess {
    /// Starts one on `port` (0: a free port, another one if it is taken meanwhile) and returns
    /// once it answers.
    pub fn start(port: u16) -> Self {
        if port != 0 {
            return RedisProcess {
                child: Some(spawn(port, &[])),
                port,
            };
        }
        for _ in 0..ATTEMPTS {
            let port = free_port();
            if let Some(child) = try_spawn(port, &[]) {
                return RedisProcess {
                    child: Some(child),
                    port,
                };
            }
        }
        panic!("no free port taken by redis-server in {ATTEMPTS} attempts");
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port (killing it first if it runs): it has lost every key.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, &[]));
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of three masters without replicas, each a `redis-server` on a free port, set
/// up with `redis-cli --cluster create`. `cluster-require-full-coverage no`: the other shards keep
/// serving while one is down (with the default, a cluster without replicas stops when a master
/// does). Their directory (the cluster's `nodes-PORT.conf` files) is removed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Option<Child>>,
    /// The masters' ports on 127.0.0.1.
    pub ports: Vec<u16>,
    /// Their cluster bus ports (free ports too: the default, port + 10000, is past 65535 for a
    /// port above 55535).
    bus_ports: Vec<u16>,
    dir: PathBuf,
}

impl RedisCluster {
    /// Starts the three masters, joins them, assigns the slots and returns once every master
    /// says `cluster_state:ok`.
    pub fn start() -> Self {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("sc-tests-redis-cluster-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let bus_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = RedisCluster {
            nodes: Vec::new(),
            ports: ports.clone(),
            bus_ports,
            dir,
        };
        for i in 0..ports.len() {
            // A port taken by someone else meanwhile: the node gets other ports.
            let mut node = None;
            for _ in 0..ATTEMPTS {
                node = c.try_spawn_node(i);
                if node.is_some() {
                    break;
                }
                c.ports[i] = free_port();
                c.bus_ports[i] = free_port();
            }
            let node = node.unwrap_or_else(|| panic!("no free ports for master {i}"));
            c.nodes.push(Some(node));
        }
        let ports = c.ports.clone();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli must be installed (apt-get install redis-server)");
        assert!(status.success(), "redis-cli --cluster create failed");
        c.wait_ok();
        c
    }

    fn try_spawn_node(&self, i: usize) -> Option<Child> {
        try_spawn(self.ports[i], &self.node_args(i))
    }

    fn node_args(&self, i: usize) -> Vec<std::ffi::OsString> {
        let port = self.ports[i];
        let conf = self.dir.join(format!("nodes-{port}.conf"));
        vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-port".into(),
            self.bus_ports[i].to_string().into(),
            "--cluster-config-file".into(),
            conf.into(),
            "--cluster-require-full-coverage".into(),
            "no".into(),
            "--dir".into(),
            self.dir.clone().into(),
        ]
    }

    /// Waits (bounded) until every running master says the cluster is ok.
    pub fn wait_ok(&self) {
        for (i, &port) in self.ports.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let deadline = Instant::now() + WAIT;
            while !Self::cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster master on port {port} did not become ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A command's answer from the node on `port`, as `redis-cli` prints it.
    pub fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The address a client is given: one master (`127.0.0.1:PORT`); it finds the others.
    pub fn seed(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    /// Kills master `i` (SIGKILL); its shard is down until [`RedisCluster::revive`].
    pub fn kill(&mut self, i: usize) {
        kill(&mut self.nodes[i]);
    }

    /// Starts master `i` again on its port with its cluster configuration (it has lost its keys
    /// but serves the same slots) and returns once the cluster is ok.
    pub fn revive(&mut self, i: usize) {
        kill(&mut self.nodes[i]);
        self.nodes[i] = Some(spawn(self.ports[i], &self.node_args(i)));
        self.wait_ok();
    }

    /// [`kill`](RedisCluster::kill) then [`revive`](RedisCluster::revive).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.revive(i);
    }

    /// The index of the master whose address (`HOST:PORT`, or a URL) ends with its port.
    pub fn index_of(&self, addr: &str) -> usize {
        let addr = addr.trim_end_matches('/');
        self.ports
            .iter()
            .position(|p| addr.ends_with(&format!(":{p}")))
            .unwrap_or_else(|| panic!("{addr} is not a master of this cluster"))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            kill(n);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
