//! Just enough of the Redis protocol (RESP2) to send a command and read its reply, over a plain
//! `std` socket (TCP, or the Unix socket of a TLS-only server): tests and the harness itself need
//! no client library and no `redis-cli`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Long enough for a `SAVE` of a test-sized data set; short enough that a hung server fails the
/// test instead of hanging it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one command on a fresh connection and returns the reply as text.
///
/// A status, integer or bulk reply is its text (`"OK"`, `"1"`, the value); a nil reply is `""`;
/// an array is its elements joined by `'\n'` (as `redis-cli` prints them when not on a terminal).
/// An error reply (`-ERR ...`, `-LOADING ...`) is an `io::Error` whose message is the error text.
/// A new connection per command keeps this stateless: it works across kills and restarts.
pub fn redis_cmd(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    command(&Endpoint::Tcp(addr), None, args)
}

/// Sends several commands, in order, on one fresh connection and returns their replies (as
/// [`redis_cmd`] renders them); stops at the first error reply.
///
/// For what depends on the connection: `WAIT` counts the replicas that acknowledged *its own
/// connection's* last write, so on a connection of its own it acknowledges nothing.
pub fn redis_cmds(addr: SocketAddr, commands: &[&[&str]]) -> io::Result<Vec<String>> {
    commands_on(&Endpoint::Tcp(addr), None, commands)
}

/// Where the harness reaches a server: its TCP port, or a Unix socket (a TLS-only server's
/// plaintext door for the harness, in the server's private directory).
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The credentials the harness logs in with: `AUTH [user] password`.
#[derive(Debug, Clone)]
pub(crate) struct Login {
    pub user: Option<String>,
    pub password: String,
}

/// [`redis_cmd`] on any endpoint, after `AUTH` when `login` is given.
pub(crate) fn command(
    endpoint: &Endpoint,
    login: Option<&Login>,
    args: &[&str],
) -> io::Result<String> {
    let mut replies = commands_on(endpoint, login, &[args])?;
    Ok(replies.pop().expect("one reply per command"))
}

/// [`redis_cmds`] on any endpoint, after `AUTH` when `login` is given.
fn commands_on(
    endpoint: &Endpoint,
    login: Option<&Login>,
    commands: &[&[&str]],
) -> io::Result<Vec<String>> {
    match endpoint {
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
            exchange(stream, login, commands)
        }
        Endpoint::Unix(path) => {
            let stream = UnixStream::connect(path)?;
            stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
            stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
            exchange(stream, login, commands)
        }
    }
}

fn exchange(
    stream: impl Read + Write,
    login: Option<&Login>,
    commands: &[&[&str]],
) -> io::Result<Vec<String>> {
    let mut stream = BufReader::new(stream);
    if let Some(login) = login {
        let mut auth = vec!["AUTH"];
        auth.extend(login.user.as_deref());
        auth.push(&login.password);
        stream.get_mut().write_all(&encode(&auth))?;
        read_reply(&mut stream)?;
    }
    commands
        .iter()
        .map(|args| {
            stream.get_mut().write_all(&encode(args))?;
            read_reply(&mut stream)
        })
        .collect()
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request
}

fn read_reply(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad reply: {line:?}"));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(rest.to_owned())),
        "$" => {
            let Ok(len) = usize::try_from(rest.parse::<i64>().map_err(|_| bad())?) else {
                return Ok(String::new()); // $-1: nil
            };
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let Ok(n) = usize::try_from(rest.parse::<i64>().map_err(|_| bad())?) else {
                return Ok(String::new()); // *-1: nil
            };
            let items = (0..n)
                .map(|_| read_reply(r))
                .collect::<io::Result<Vec<_>>>()?;
            Ok(items.join("\n"))
        }
        _ => Err(bad()),
    }
}

/// One `field:value` line of an `INFO` reply.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<String> {
        read_reply(&mut io::Cursor::new(bytes))
    }

    #[test]
    fn replies_become_text() {
        assert_eq!(parse(b"+OK\r\n").unwrap(), "OK");
        assert_eq!(parse(b":42\r\n").unwrap(), "42");
        assert_eq!(parse(b"$5\r\nab\r\nc\r\n").unwrap(), "ab\r\nc");
        assert_eq!(parse(b"$-1\r\n").unwrap(), "");
        assert_eq!(parse(b"*2\r\n$1\r\na\r\n:1\r\n").unwrap(), "a\n1");
        let err = parse(b"-LOADING Redis is loading\r\n").unwrap_err();
        assert_eq!(err.to_string(), "LOADING Redis is loading");
        assert!(parse(b"").is_err());
        assert!(parse(b"?\r\n").is_err());
    }

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Server\r\nrun_id:abc\r\nrole:master\r\nrole_x:no\r\n";
        assert_eq!(info_field(info, "run_id"), Some("abc"));
        assert_eq!(info_field(info, "role"), Some("master"));
        assert_eq!(info_field(info, "missing"), None);
    }
}
