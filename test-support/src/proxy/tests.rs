//! The proxy against a real `redis-server`, through plain sockets.

use super::*;
use crate::{RedisServer, redis_cmd};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream as StdStream;

/// A connection through the proxy that has answered one inline `PING`.
fn connect(proxy: &FaultProxy) -> StdStream {
    let mut stream = StdStream::connect(proxy.addr()).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(
        ping(&mut stream).expect("PING through the proxy"),
        "+PONG\r\n"
    );
    stream
}

fn ping(stream: &mut StdStream) -> std::io::Result<String> {
    stream.write_all(b"PING\r\n")?;
    read_reply(stream)
}

fn read_reply(stream: &mut StdStream) -> std::io::Result<String> {
    let mut buf = [0; 64];
    match stream.read(&mut buf)? {
        0 => Err(ErrorKind::UnexpectedEof.into()),
        n => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
    }
}

/// The connection ended (FIN or RST) rather than timing out.
fn assert_closed(stream: &mut StdStream) {
    let mut buf = [0; 64];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        other => panic!("expected a closed connection, got {other:?}"),
    }
}

#[test]
fn forwards_and_counts() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    assert_eq!(proxy.target(), redis.addr());
    assert_eq!(redis_cmd(proxy.addr(), &["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(redis.cmd(&["GET", "k"]), "v");
    let mut stream = connect(&proxy);
    assert_eq!(proxy.connections_accepted(), 2);
    // Counted right after each write, so possibly a moment after the client read it.
    wait_until(|| proxy.bytes_from_target() == "+OK\r\n+PONG\r\n".len() as u64);
    assert!(proxy.bytes_to_target() > "PING\r\n".len() as u64);
    assert_eq!(
        proxy.bytes_forwarded(),
        proxy.bytes_to_target() + proxy.bytes_from_target()
    );

    // A client's close travels through, and the connection is gone from the count.
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_closed(&mut stream);
    wait_until(|| proxy.connections_open() == 0);
}

#[test]
fn pause_stalls_both_ways_until_resume() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    let mut stream = connect(&proxy);

    proxy.pause();
    assert!(proxy.is_paused());
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    stream.write_all(b"SET paused 1\r\n").unwrap();
    let stalled = read_reply(&mut stream).unwrap_err();
    assert!(
        matches!(stalled.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{stalled:?}"
    );
    assert_eq!(
        redis.cmd(&["EXISTS", "paused"]),
        "0",
        "the request waits in the proxy"
    );
    assert_eq!(proxy.connections_open(), 1, "the connection stays open");

    proxy.resume();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(read_reply(&mut stream).unwrap(), "+OK\r\n");
    assert_eq!(redis.cmd(&["GET", "paused"]), "1");
}

#[test]
fn cut_resets_open_connections_but_not_later_ones() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    let mut idle = connect(&proxy);
    let mut stalled = connect(&proxy);
    proxy.pause();
    stalled.write_all(b"PING\r\n").unwrap();

    proxy.cut();
    assert_closed(&mut idle);
    assert_closed(&mut stalled);
    wait_until(|| proxy.connections_open() == 0);

    proxy.resume();
    let mut fresh = connect(&proxy);
    assert_eq!(ping(&mut fresh).unwrap(), "+PONG\r\n");
}

#[test]
fn refuse_resets_new_connections_only() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    let mut open = connect(&proxy);

    proxy.refuse(true);
    assert!(redis_cmd(proxy.addr(), &["PING"]).is_err());
    assert_eq!(proxy.connections_refused(), 1);
    assert_eq!(proxy.connections_accepted(), 1);
    assert_eq!(
        ping(&mut open).unwrap(),
        "+PONG\r\n",
        "open connections are untouched"
    );

    proxy.refuse(false);
    assert_eq!(redis_cmd(proxy.addr(), &["PING"]).unwrap(), "PONG");
}

#[test]
fn delay_holds_each_direction() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    let mut stream = connect(&proxy);

    proxy.delay(Duration::from_millis(150));
    let started = std::time::Instant::now();
    assert_eq!(ping(&mut stream).unwrap(), "+PONG\r\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    proxy.delay(Duration::ZERO);
    let started = std::time::Instant::now();
    assert_eq!(ping(&mut stream).unwrap(), "+PONG\r\n");
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn retarget_sends_new_connections_elsewhere_and_cut_moves_the_open_ones() {
    let old = RedisServer::start();
    let new = RedisServer::start();
    old.cmd(&["SET", "who", "old"]);
    new.cmd(&["SET", "who", "new"]);
    let proxy = FaultProxy::start(&old);
    let mut open = connect(&proxy);
    assert_eq!(redis_cmd(proxy.addr(), &["GET", "who"]).unwrap(), "old");

    proxy.retarget(&new);
    assert_eq!(proxy.target(), new.addr());
    assert_eq!(
        redis_cmd(proxy.addr(), &["GET", "who"]).unwrap(),
        "new",
        "a connection accepted after the retarget goes to the new target"
    );
    // The connection opened before still talks to the old server...
    open.write_all(b"GET who\r\n").unwrap();
    assert_eq!(read_reply(&mut open).unwrap(), "$3\r\nold\r\n");
    // ...until it is cut; its client reconnects to the new one.
    proxy.cut();
    assert_closed(&mut open);
    let mut reopened = connect(&proxy);
    reopened.write_all(b"GET who\r\n").unwrap();
    assert_eq!(read_reply(&mut reopened).unwrap(), "$3\r\nnew\r\n");
}

#[test]
fn drop_closes_the_port_and_every_connection() {
    let redis = RedisServer::start();
    let proxy = FaultProxy::start(&redis);
    let addr = proxy.addr();
    let mut stream = connect(&proxy);
    drop(proxy);
    assert_closed(&mut stream);
    assert!(
        StdStream::connect(addr).is_err(),
        "still listening after drop"
    );
    assert_eq!(redis.cmd(&["PING"]), "PONG");
}

fn wait_until(condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met within 2 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
