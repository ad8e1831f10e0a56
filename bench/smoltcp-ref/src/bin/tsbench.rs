//! tsbench: load generators and a kernel-socket server for `make bench`.
//!
//! Every generator prints one JSON object on stdout whose `value` and `unit`
//! are the headline figure; bench/run.sh adds target, workload and round.
//!
//!   tsbench server   --bind IP                 echo 7, discard 9, chargen 19 (kernel TCP)
//!   tsbench probe    --to IP:PORT [--timeout-ms 1000]          exit 0 if a connect succeeds
//!   tsbench send     --to IP:PORT --bytes N [--max-secs S]     bulk to discard
//!   tsbench recv     --to IP:PORT --bytes N [--max-secs S]     bulk from chargen
//!   tsbench rr       --to IP:PORT --count N [--max-secs S]     1-byte echo round trips
//!   tsbench connrate --to IP:PORT --secs S                     connect, 1 byte, close
//!   tsbench hold     --to IP:PORT --count K [--rss-pid PID] [--max-secs S]
//!   tsbench pingstat < ping-output                             RTT median/p99 from `ping`

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;

type Args = HashMap<String, String>;

fn parse_args(rest: &[String]) -> Result<Args, String> {
    let mut args = Args::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let name = flag
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {flag:?}"))?;
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        args.insert(name.to_string(), value.clone());
    }
    Ok(args)
}

fn get<T: std::str::FromStr>(args: &Args, name: &str, default: Option<T>) -> Result<T, String> {
    match args.get(name) {
        Some(v) => v.parse().map_err(|_| format!("--{name}: bad value {v:?}")),
        None => default.ok_or_else(|| format!("--{name} is required")),
    }
}

fn target(args: &Args) -> Result<SocketAddr, String> {
    let to: String = get(args, "to", None)?;
    to.parse().map_err(|_| format!("--to: not IP:PORT: {to:?}"))
}

fn connect(to: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"))
}

/// Lets one process hold ten thousand sockets.
fn raise_nofile() {
    let want: libc::rlim_t = 65_536;
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want;
            if lim.rlim_max < want {
                lim.rlim_max = want;
            }
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn mbits(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs / 1e6
}

// ---------------------------------------------------------------- server

fn serve_conn(port: u16, mut s: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    match port {
        7 => {
            let _ = s.set_nodelay(true);
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
        9 => while matches!(s.read(&mut buf), Ok(n) if n > 0) {},
        _ => {
            let line: Vec<u8> = (b' '..=b'~').collect();
            let mut pattern = Vec::new();
            for l in 0..line.len() {
                for i in 0..72 {
                    pattern.push(line[(l + i) % line.len()]);
                }
                pattern.extend_from_slice(b"\r\n");
            }
            let mut at = 0;
            for b in buf.iter_mut() {
                *b = pattern[at];
                at = (at + 1) % pattern.len();
            }
            // The pattern period divides neither CHUNK nor a write; good
            // enough for a throughput source.
            while s.write_all(&buf).is_ok() {}
        }
    }
    let _ = s.shutdown(Shutdown::Both);
}

fn server(args: &Args) -> Result<(), String> {
    raise_nofile();
    let bind: IpAddr = get(args, "bind", None)?;
    let mut handles = Vec::new();
    for port in [7u16, 9, 19] {
        let listener = TcpListener::bind((bind, port)).map_err(|e| format!("bind {port}: {e}"))?;
        // std listens with a backlog of 128; a burst of ten thousand connects
        // would overflow it while the accept loop spawns threads.
        unsafe {
            libc::listen(std::os::unix::io::AsRawFd::as_raw_fd(&listener), 4096);
        }
        handles.push(thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || serve_conn(port, s));
            }
        }));
    }
    eprintln!("tsbench server: {bind} echo 7, discard 9, chargen 19");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

// ------------------------------------------------------------ generators

fn probe(args: &Args) -> Result<(), String> {
    let to = target(args)?;
    let ms: u64 = get(args, "timeout-ms", Some(1000))?;
    connect(to, Duration::from_millis(ms)).map(|_| ())
}

fn send(args: &Args) -> Result<(), String> {
    let to = target(args)?;
    let bytes: u64 = get(args, "bytes", None)?;
    let max = Duration::from_secs_f64(get(args, "max-secs", Some(60.0))?);
    let buf = vec![b'x'; CHUNK];
    let start = Instant::now();
    let mut s = connect(to, Duration::from_secs(3))?;
    // A stalled peer must not hold the generator past its limit.
    s.set_write_timeout(Some(Duration::from_millis(500))).ok();
    let mut sent = 0u64;
    let mut capped = false;
    while sent < bytes {
        if start.elapsed() > max {
            capped = true;
            break;
        }
        let n = (bytes - sent).min(CHUNK as u64) as usize;
        match s.write(&buf[..n]) {
            Ok(w) => sent += w as u64,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("send after {sent} bytes: {e}")),
        }
    }
    // Done when the discard server has read everything: it closes on our FIN.
    let _ = s.shutdown(Shutdown::Write);
    let left = max.saturating_sub(start.elapsed()).max(Duration::from_millis(500));
    s.set_read_timeout(Some(left)).ok();
    let mut sink = [0u8; 4096];
    let drained = loop {
        match s.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"value\":{:.1},\"unit\":\"Mbit/s\",\"bytes\":{sent},\"secs\":{secs:.3},\"capped\":{},\"peer_closed\":{drained}}}",
        mbits(sent, secs),
        capped
    );
    Ok(())
}

fn recv(args: &Args) -> Result<(), String> {
    let to = target(args)?;
    let bytes: u64 = get(args, "bytes", None)?;
    let max = Duration::from_secs_f64(get(args, "max-secs", Some(60.0))?);
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    let mut s = connect(to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    let mut got = 0u64;
    let mut capped = false;
    while got < bytes {
        if start.elapsed() > max {
            capped = true;
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("peer closed after {got} bytes")),
            Ok(n) => got += n as u64,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("recv after {got} bytes: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"value\":{:.1},\"unit\":\"Mbit/s\",\"bytes\":{got},\"secs\":{secs:.3},\"capped\":{capped}}}",
        mbits(got, secs)
    );
    Ok(())
}

fn rr(args: &Args) -> Result<(), String> {
    let to = target(args)?;
    let count: usize = get(args, "count", Some(10_000))?;
    let max = Duration::from_secs_f64(get(args, "max-secs", Some(30.0))?);
    let mut s = connect(to, Duration::from_secs(3))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut byte = [0u8; 1];
    let mut samples = Vec::with_capacity(count);
    let start = Instant::now();
    // A few untimed exchanges first: the connection and caches warm up.
    for i in 0..count + 100 {
        if start.elapsed() > max {
            break;
        }
        let t = Instant::now();
        s.write_all(b"r").map_err(|e| format!("write: {e}"))?;
        s.read_exact(&mut byte)
            .map_err(|e| format!("read after {i} round trips: {e}"))?;
        if i >= 100 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    if samples.is_empty() {
        return Err("no round trip completed".to_string());
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    println!(
        "{{\"value\":{:.1},\"unit\":\"us\",\"p99_us\":{:.1},\"mean_us\":{mean:.1},\"count\":{}}}",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.len()
    );
    Ok(())
}

fn connrate(args: &Args) -> Result<(), String> {
    let to = target(args)?;
    let secs = Duration::from_secs_f64(get(args, "secs", Some(3.0))?);
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut sink = [0u8; 64];
    let start = Instant::now();
    while start.elapsed() < secs {
        let one = (|| -> io::Result<()> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"c")?;
            s.shutdown(Shutdown::Write)?;
            // The close is complete when the server's FIN arrives.
            while s.read(&mut sink)? > 0 {}
            Ok(())
        })();
        match one {
            Ok(()) => done += 1,
            Err(_) => errors += 1,
        }
        if errors > 100 && errors > done {
            return Err(format!("{errors} failed connections, {done} good"));
        }
    }
    let el = start.elapsed().as_secs_f64();
    println!(
        "{{\"value\":{:.0},\"unit\":\"conn/s\",\"conns\":{done},\"errors\":{errors},\"secs\":{el:.3}}}",
        done as f64 / el
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn hold(args: &Args) -> Result<(), String> {
    raise_nofile();
    let to = target(args)?;
    let count: usize = get(args, "count", Some(10_000))?;
    let max = Duration::from_secs_f64(get(args, "max-secs", Some(60.0))?);
    let pid: Option<u32> = args.get("rss-pid").and_then(|p| p.parse().ok());
    let before = pid.and_then(rss_kib);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(count);
    let mut errors = 0u64;
    while conns.len() < count && start.elapsed() < max {
        match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
            Ok(s) => conns.push(s),
            Err(_) => {
                errors += 1;
                if errors > 50 {
                    break;
                }
            }
        }
    }
    let opened = start.elapsed().as_secs_f64();
    // A sample of 100 connections, spread over all of them, proves with one
    // echo each that the server side is established and serving.
    let step = (conns.len() / 100).max(1);
    let (mut checked, mut echoed) = (0usize, 0usize);
    let mut byte = [0u8; 1];
    for s in conns.iter_mut().step_by(step) {
        checked += 1;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        s.set_nodelay(true).ok();
        if s.write_all(b"h").is_ok() && s.read_exact(&mut byte).is_ok() {
            echoed += 1;
        }
    }
    let live = conns.len();
    thread::sleep(Duration::from_millis(300));
    let after = pid.and_then(rss_kib);
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if live > 0 => format!("{:.0}", (a.saturating_sub(b) as f64 * 1024.0) / live as f64),
        _ => "null".to_string(),
    };
    let fmt = |v: Option<u64>| v.map_or("null".to_string(), |v| v.to_string());
    println!(
        "{{\"value\":{live},\"unit\":\"conns\",\"rss_bytes_per_conn\":{per_conn},\"rss_before_kib\":{},\"rss_after_kib\":{},\"open_secs\":{opened:.3},\"errors\":{errors},\"echo_checked\":{checked},\"echo_ok\":{echoed}}}",
        fmt(before),
        fmt(after)
    );
    for s in conns {
        let _ = s.shutdown(Shutdown::Both);
    }
    Ok(())
}

fn pingstat() -> Result<(), String> {
    let mut rtts = Vec::new();
    let mut sent = 0u64;
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(t) = line.split("time=").nth(1) {
            if let Some(v) = t.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
                rtts.push(v * 1000.0);
            }
        }
        if let Some(head) = line.split(" packets transmitted").next() {
            if head != line {
                sent = head.trim().parse().unwrap_or(0);
            }
        }
    }
    if rtts.is_empty() {
        return Err("no echo replies in the ping output".to_string());
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"value\":{:.1},\"unit\":\"us\",\"p99_us\":{:.1},\"replies\":{},\"sent\":{sent}}}",
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        rtts.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let Some(cmd) = argv.get(1) else {
        eprintln!("usage: tsbench server|probe|send|recv|rr|connrate|hold|pingstat --OPTION VALUE ...");
        return ExitCode::from(2);
    };
    let result = parse_args(&argv[2..]).and_then(|args| match cmd.as_str() {
        "server" => server(&args),
        "probe" => probe(&args),
        "send" => send(&args),
        "recv" => recv(&args),
        "rr" => rr(&args),
        "connrate" => connrate(&args),
        "hold" => hold(&args),
        "pingstat" => pingstat(),
        _ => Err(format!("unknown command {cmd:?}")),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("tsbench {cmd}: {msg}");
            ExitCode::FAILURE
        }
    }
}
