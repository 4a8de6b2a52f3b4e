//! The client and session layers in-process against the fake pool: connection reuse and
//! replacement, streaming, timeouts, offline and misconfigured pools, and where `cd` leaves the
//! shell.

mod common;

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{FAIL_MESSAGE, FakePool, cluster, dead_address, key, pool_name};
use tidepool_admin::client::{ClientError, PoolClient, PoolStatus};
use tidepool_admin::line::Location;
use tidepool_admin::session::{Console, Mode, Session, Step};
use tidepool_admin::{ShellError, ShellOptions};
use tidepool_p2p::message::{CommandDetail, Takes};

/// A fake pool `pool1`, and a client whose cluster file also lists `pool2` where nobody
/// listens.
async fn setup() -> (FakePool, PoolClient) {
    let key = key();
    let pool = common::start("pool1").await;
    let cluster = cluster(&[("pool1", pool.addr, &["disk"]), ("pool2", dead_address(), &[])]);
    (pool, PoolClient::new(cluster, key))
}

async fn run(client: &mut PoolClient, line: &str) -> Result<(String, Option<tidepool_p2p::RemoteError>), ClientError> {
    let mut out = String::new();
    let mut collect = |chunk: &str| -> io::Result<()> {
        out.push_str(chunk);
        Ok(())
    };
    let error = client.run(&pool_name("pool1"), line, &mut collect).await?;
    Ok((out, error))
}

#[tokio::test]
async fn one_connection_is_reused_and_commands_are_asked_once() {
    let (pool, mut client) = setup().await;
    for word in ["a", "b", "c"] {
        assert_eq!(run(&mut client, word).await.unwrap(), (format!("echo: {word}"), None));
    }
    for _ in 0..2 {
        assert_eq!(client.commands(&pool_name("pool1")).await.unwrap(), common::details());
    }
    let (_, error) = run(&mut client, "fail").await.unwrap();
    assert_eq!(error.unwrap().message, FAIL_MESSAGE);
    assert_eq!(pool.counts.connections.load(Ordering::SeqCst), 1);
    assert_eq!(pool.counts.detail_requests.load(Ordering::SeqCst), 1);
    assert_eq!(pool.counts.describes.load(Ordering::SeqCst), 0);
}

/// A pool older than `DescribeDetails` does not offer it in the handshake: the shell never
/// sends it, asks for the plain list (option names only, as before) on the same connection, and
/// goes on working.
#[tokio::test]
async fn a_pool_without_details_gets_asked_for_the_plain_list() {
    let (pool, mut client) = setup().await;
    pool.counts.old.store(true, Ordering::SeqCst);
    let plain: Vec<CommandDetail> = common::commands().iter().map(CommandDetail::from).collect();
    for _ in 0..2 {
        assert_eq!(client.commands(&pool_name("pool1")).await.unwrap(), plain);
    }
    assert!(plain[0].options.iter().all(|o| o.takes == Takes::Unknown));
    assert_eq!(run(&mut client, "a").await.unwrap(), ("echo: a".to_string(), None));
    assert_eq!(pool.counts.detail_requests.load(Ordering::SeqCst), 0);
    assert_eq!(pool.counts.describes.load(Ordering::SeqCst), 1);
    assert_eq!(pool.counts.connections.load(Ordering::SeqCst), 1);
}

/// The pool closes the connection while the shell is idle, as when it restarts between two
/// commands. Driven like the shell drives it: the pool on a runtime of its own, the client on a
/// current-thread runtime entered once per command and not running in between.
#[test]
fn a_connection_the_pool_closed_is_replaced_before_the_next_command() {
    let server = tokio::runtime::Runtime::new().expect("server runtime");
    let shell = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("shell runtime");
    let (mut pool, mut client) = server.block_on(setup());
    assert_eq!(shell.block_on(run(&mut client, "first")).unwrap(), ("echo: first".into(), None));
    pool.hangup.notify_one();
    pool.closed.blocking_recv().expect("the fake pool closed the connection");
    assert_eq!(shell.block_on(run(&mut client, "hello")).unwrap(), ("echo: hello".into(), None));
    assert_eq!(pool.counts.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn long_output_streams_in_order() {
    let (_pool, mut client) = setup().await;
    let (out, error) = run(&mut client, "stream 2000").await.unwrap();
    assert!(error.is_none());
    let expected: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    assert_eq!(out, expected);
}

#[tokio::test]
async fn a_silent_pool_times_out_and_the_next_command_gets_a_fresh_connection() {
    let (pool, client) = setup().await;
    let mut client = client.with_reply_timeout(Duration::from_millis(50));
    let err = run(&mut client, "hang").await.unwrap_err();
    assert!(matches!(err, ClientError::NoReply { .. }), "{err}");
    assert!(err.to_string().starts_with("pool1 sent nothing for 50ms"), "{err}");
    assert_eq!(run(&mut client, "hello").await.unwrap(), ("echo: hello".into(), None));
    assert_eq!(pool.counts.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn offline_unknown_and_wrong_key_pools_are_reported() {
    let (pool, mut client) = setup().await;
    let pool2 = client.cluster().pools[1].admin;
    let err = client.connect(&pool_name("pool2")).await.unwrap_err();
    assert_eq!(err.to_string(), format!("pool2 is offline: connection refused at {pool2}"));
    let err = client.connect(&pool_name("nosuch")).await.unwrap_err();
    assert_eq!(err.to_string(), "no pool named nosuch in the cluster file");

    // A shell holding a certificate from another CA.
    let mut wrong_key = PoolClient::new(cluster(&[("pool1", pool.addr, &[])]), common::stranger().1);
    let err = wrong_key.connect(&pool_name("pool1")).await.unwrap_err();
    let expected = format!("pool1 at {} refused the shell: authentication failed: ", pool.addr);
    assert!(err.to_string().starts_with(&expected), "{err}");
    assert!(err.to_string().contains("(rc=20001)\nhint: the peer's certificate was not accepted"), "{err}");
}

#[tokio::test]
async fn a_pool_answering_under_another_name_is_refused() {
    let key = key();
    let pool = common::start("pool1").await;
    let mut client = PoolClient::new(cluster(&[("other", pool.addr, &[])]), key);
    let err = client.connect(&pool_name("other")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the pool at {} calls itself pool1, not other; check the cluster file", pool.addr)
    );
}

#[tokio::test]
async fn probes_tell_online_from_offline_in_file_order() {
    let (_pool, client) = setup().await;
    let statuses = client.probe_all().await;
    assert_eq!(statuses, vec![PoolStatus::Online, PoolStatus::Offline { reason: "connection refused".into() }]);
}

/// A console writing into memory.
#[derive(Clone, Default)]
struct Captured(Rc<RefCell<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.borrow_mut())).expect("utf-8 output")
    }
}

#[tokio::test]
async fn cd_moves_only_when_the_pool_answers() {
    let (_pool, client) = setup().await;
    let (out, err) = (Captured::default(), Captured::default());
    let mut console = Console { out: Box::new(out.clone()), err: Box::new(err.clone()) };
    let mut session = Session::new(client, Mode::Scripted);
    let mut step = async |line: &str| session.execute(line, &mut console).await.unwrap();

    assert_eq!(step("cd pool1").await, Step::Done);
    assert_eq!(step("hello").await, Step::Done);
    assert_eq!(out.take(), "echo: hello\n");
    assert_eq!(step("cd pool2").await, Step::Failed);
    assert!(err.take().starts_with("pool2 is offline: connection refused at 127.0.0.1:"));
    assert_eq!(step("help").await, Step::Done);
    assert!(out.take().starts_with("echo: help\n(shell: `cd ..` back to (local)"));
    assert_eq!(step("fail").await, Step::Failed);
    assert!(err.take().starts_with(FAIL_MESSAGE));
    assert_eq!(step("exit").await, Step::Exit);
    assert_eq!(session.location(), &Location::Pool(pool_name("pool1")));
}

#[tokio::test]
async fn run_refuses_to_nest_in_a_runtime() {
    let opts = ShellOptions {
        cluster: cluster(&[]),
        credentials: key(),
        commands: vec!["ls".into()],
        history: None,
        banner: None,
        start_in: None,
    };
    assert!(matches!(tidepool_admin::run(opts), Err(ShellError::InsideRuntime)));
}
