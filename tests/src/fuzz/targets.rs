//! The fuzz targets. Each runs the real entry point the daemon uses on one input and checks,
//! besides "no panic", a property an operator relies on:
//!
//! - `frame`: `FrameReader` over the bytes with the daemon's limit, every message body decoded
//!   as every message type; a frame takes at least 5 bytes, so no input yields more frames
//!   than a fifth of its length; the same bytes arriving a few at a time, with each `next`
//!   dropped when it waits (it is cancel-safe), give the same frames and the same end.
//! - `handshake`: the server's `accept` or the client's `connect` against a peer that sends the
//!   bytes (inside TLS, which authenticated the peer already); the pool admits a peer only as
//!   its certificate's role allows: a client never on the admin endpoint, a pool only under its
//!   certificate's name; the client agrees only on features it offered.
//! - `admin`: the shell's `line::interpret` and `complete::complete` (at the end of the line
//!   and at a cursor inside it), the lexer (`p2p::cmdline`), then `admin::parse` (with the
//!   error rendered under the line); a `migration copy|move|cache` line's stored form reads
//!   back as the same job.
//! - `options`: the option grammar of `migration copy|move|cache` (`definition::parse` for each
//!   kind, and the interval, mode, sticky and expression parsers on every value).
//! - `expr`: parse and type check in both contexts, then evaluation with values of the
//!   declared types: the value has the type the checker gave.
//! - `saved`: `Module::parse_saved`, then every readable job's id and command as restore
//!   reads them (`pool/src/migration_env.rs`).
//! - `record`: `record::decode` and `decode_entry` (and the same bytes as a stored hold with
//!   its owner, which must encode back to them); a record that decodes in full gives the
//!   index the same fields, and encodes back to itself.

use std::sync::OnceLock;

use tidepool_admin::complete::{Known, complete};
use tidepool_admin::line::{Location, interpret};
use tidepool_migration::definition::{self, JobKind};
use tidepool_migration::env::HoldOwner;
use tidepool_migration::expr::Expr;
use tidepool_migration::expr::{self, Type, Value};
use tidepool_migration::filter::{Interval, parse_sticky};
use tidepool_migration::grammar;
use tidepool_migration::mode::{SourceMode, TargetMode};
use tidepool_migration::module::Module;
use tidepool_p2p::ErrorCode;
use tidepool_p2p::auth::{ClientAuth, Features, HandshakeReply, Hello, Service, accept, connect};
use tidepool_p2p::cmdline::{Args, point_at, tokenize};
use tidepool_p2p::frame::{Frame, FrameReader, FrameWriter, MAX_FRAME, WireError, decode};
use tidepool_p2p::message::{
    AdminReply, AdminRequest, CommandDetail, DataReply, DataRequest, MigrationReply, MigrationRequest,
};
use tidepool_p2p::tls::{Identity, Role};
use tidepool_p2p::{JobId, PnfsId, PoolName};
use tidepool_pool::admin::{self, Command};
use tidepool_pool::migration_env::PoolEnv;
use tidepool_pool::repository::record;

use super::{Ctx, Target, gen_text, gen_wire};

pub static TARGETS: &[Target] = &[
    Target { name: "frame", what: "p2p frame decoder and message decoding", generate: gen_wire::frames, run: frame },
    Target { name: "handshake", what: "p2p handshake, both sides", generate: gen_wire::handshake, run: handshake },
    Target { name: "admin", what: "admin line lexer and parser", generate: gen_text::admin_line, run: admin_line },
    Target {
        name: "options",
        what: "migration copy|move|cache option grammar",
        generate: gen_text::job_options,
        run: job_options,
    },
    Target {
        name: "expr",
        what: "expression parser, type checker, evaluation",
        generate: gen_text::expression,
        run: expression,
    },
    Target { name: "saved", what: "saved-job parser and restore", generate: gen_text::saved_text, run: saved },
    Target { name: "record", what: "repository record decoder", generate: gen_wire::record_bytes, run: record_decode },
];

/// What a `FrameReader` made of an input: each frame (message or not, and its body), then how
/// the reading ended.
#[derive(Debug, PartialEq)]
struct Frames {
    frames: Vec<(bool, Vec<u8>)>,
    end: String,
}

/// The end of a reading, as a label and as text to compare.
fn ending(result: Result<(), WireError>) -> (&'static str, String) {
    match result {
        Ok(()) => ("clean end", String::new()),
        Err(e) => {
            let label = match e {
                WireError::Oversized { .. } => "oversized frame",
                WireError::Closed => "cut short",
                WireError::Malformed(_) => "malformed frame",
                _ => "other error",
            };
            (label, e.to_string())
        }
    }
}

fn frame(ctx: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    let (straight, label, decoded) = ctx.block_on(async {
        let mut reader = FrameReader::new(input, MAX_FRAME);
        let mut out = Frames { frames: Vec::new(), end: String::new() };
        let mut decoded = 0usize;
        let result = loop {
            match reader.next().await {
                Ok(Some(Frame::Message(body))) => {
                    let results = [
                        decode::<AdminRequest>(&body).is_ok(),
                        decode::<AdminReply>(&body).is_ok(),
                        decode::<DataRequest>(&body).is_ok(),
                        decode::<DataReply>(&body).is_ok(),
                        decode::<MigrationRequest>(&body).is_ok(),
                        decode::<MigrationReply>(&body).is_ok(),
                        decode::<Hello>(&body).is_ok(),
                        decode::<ClientAuth>(&body).is_ok(),
                        decode::<HandshakeReply>(&body).map_err(|e| e.to_string()).is_ok(),
                    ];
                    decoded += usize::from(results.contains(&true));
                    out.frames.push((true, body.to_vec()));
                }
                Ok(Some(Frame::Data(body))) => out.frames.push((false, body.to_vec())),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
            if out.frames.len() * 5 > input.len() {
                return Err(format!("{} frames out of {} bytes", out.frames.len(), input.len()));
            }
        };
        let (label, end) = ending(result);
        out.end = end;
        Ok((out, label, decoded))
    })?;
    // The same bytes arriving a few at a time, with every call to `next` dropped the first
    // time it waits: `next` is documented as cancel-safe, so the frames must be the same.
    let chunk = 1 + input.iter().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(usize::from(*b))) % 9;
    let trickled = read_trickled(input, chunk)?;
    if trickled != straight {
        return Err(format!(
            "read {chunk} bytes at a time with cancelled calls, the frames differ: {trickled:?} instead of {straight:?}"
        ));
    }
    Ok(match (straight.frames.len(), decoded) {
        (0, _) => label,
        (_, 0) => "frames, no message decoded",
        _ => "messages decoded",
    })
}

/// Hands out `chunk` bytes per read, and says "not yet" before each read.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    wait: bool,
}

impl tokio::io::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.wait {
            self.wait = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.wait = true;
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads `input` through a [`Trickle`], dropping each `next` future when it is pending.
fn read_trickled(input: &[u8], chunk: usize) -> Result<Frames, String> {
    use std::future::Future;
    let mut reader = FrameReader::new(Trickle { data: input, chunk, wait: true }, MAX_FRAME);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut out = Frames { frames: Vec::new(), end: String::new() };
    let mut polls = 0usize;
    let result = loop {
        polls += 1;
        if polls > 4 * input.len() + 100 {
            return Err(format!("no end after {polls} polls of {} bytes read {chunk} at a time", input.len()));
        }
        let next = std::pin::pin!(reader.next());
        match next.poll(&mut cx) {
            std::task::Poll::Pending => continue,
            std::task::Poll::Ready(Ok(Some(Frame::Message(body)))) => out.frames.push((true, body.to_vec())),
            std::task::Poll::Ready(Ok(Some(Frame::Data(body)))) => out.frames.push((false, body.to_vec())),
            std::task::Poll::Ready(Ok(None)) => break Ok(()),
            std::task::Poll::Ready(Err(e)) => break Err(e),
        }
    };
    out.end = ending(result).1;
    Ok(out)
}

fn handshake(ctx: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    let Some((&side, peer)) = input.split_first() else { return Ok("empty") };
    let service = if side & 2 == 0 { Service::Admin } else { Service::Data };
    // The certificate TLS vouched for: a client's, or pool2's.
    let identity = if side & 4 == 0 {
        Identity { role: Role::Client, name: "alice".into() }
    } else {
        Identity { role: Role::Pool, name: "pool2".into() }
    };
    let offered = Features::ALL.without(Features::COMMAND_DETAILS);
    ctx.block_on(async {
        let mut reader = FrameReader::new(peer, MAX_FRAME);
        let mut writer = FrameWriter::new(tokio::io::sink());
        if side & 1 == 1 {
            let outcome = accept(&mut reader, &mut writer, "pool1", service, offered, &identity, |_, _| Ok(())).await;
            match outcome {
                Ok(p) if p.identity.role == Role::Client && service == Service::Admin => {
                    Err(format!("a client certificate was admitted to the admin endpoint as {:?}", p.name))
                }
                Ok(p) if p.identity.role == Role::Pool && service == Service::Data && p.name != "pool2" => {
                    Err(format!("pool2's certificate was admitted as {:?}", p.name))
                }
                Ok(p) if !offered.contains(p.features) => Err(format!("agreed on {:?}, never offered", p.features)),
                Ok(_) => Ok("admitted"),
                Err(e) => Ok(refused(e)),
            }
        } else {
            match connect(&mut reader, &mut writer, "shell", service, offered).await {
                Ok(w) if !offered.contains(w.features) => Err(format!("agreed on {:?}, never offered", w.features)),
                Ok(_) => Ok("welcomed"),
                Err(e) => Ok(refused(e)),
            }
        }
    })
}

fn refused(e: WireError) -> &'static str {
    let _ = e.to_string();
    match e {
        WireError::Handshake(e) if e.code() == Some(ErrorCode::Forbidden) => "refused: role",
        WireError::Handshake(_) => "refused: version, service or magic",
        WireError::Remote(_) => "refused by the pool",
        WireError::Malformed(_) | WireError::Unexpected { .. } => "malformed",
        _ => "cut short or oversized",
    }
}

/// Checks that a lexer offset can be pointed at.
fn offset_ok(line: &str, offset: usize, what: &str) -> Result<(), String> {
    if offset > line.len() || !line.is_char_boundary(offset) {
        return Err(format!("{what} offset {offset} is not a character boundary of a {}-byte line", line.len()));
    }
    let _ = point_at(line, offset);
    Ok(())
}

/// A job line's stored form (what `migration ls` shows and `save` keeps) must read back as the
/// same job with the same stored form.
fn stored_form_reads_back(command: &Command) -> Result<(), String> {
    let Command::MigrationCreate { def, command } = command else { return Ok(()) };
    match admin::parse(command) {
        Ok(Some(Command::MigrationCreate { def: again, command: stored })) if again == *def && stored == *command => {
            Ok(())
        }
        Ok(Some(Command::MigrationCreate { def: again, command: stored })) => Err(format!(
            "the stored form {command:?} reads back as another job: {stored:?}, {again:?} instead of {def:?}"
        )),
        other => Err(format!("the stored form {command:?} does not read back: {other:?}")),
    }
}

/// What the shell's completion knows in the admin target: two pools, two groups and the
/// declared commands.
fn shell_knows() -> &'static (Vec<PoolName>, Vec<String>, Vec<CommandDetail>) {
    static KNOWN: OnceLock<(Vec<PoolName>, Vec<String>, Vec<CommandDetail>)> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let pools = ["pool1", "pool2"].iter().map(|p| p.parse().expect("a valid pool name")).collect();
        (pools, vec!["disk".into(), "tape".into()], admin::describe_details())
    })
}

fn admin_line(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    let line = String::from_utf8_lossy(input);
    // The shell first: what the operator types is interpreted and completed there.
    let (pools, groups, commands) = shell_knows();
    let _ = interpret(&line, &Location::Local).map_err(|e| e.to_string());
    let _ = interpret(&line, &Location::Pool(pools[0].clone())).map_err(|e| e.to_string());
    // A cursor inside the line, on a character boundary as the line editor gives it.
    let mut cursor =
        input.iter().fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(usize::from(*b))) % (line.len() + 1);
    while !line.is_char_boundary(cursor) {
        cursor -= 1;
    }
    for pos in [line.len(), cursor] {
        let (start, _) = complete(&line, pos, Known { pools, groups, here: Some(&pools[0]), commands: Some(commands) });
        if start > pos {
            return Err(format!("completion at {pos} replaces a word that starts at {start}, after the cursor"));
        }
        let _ = complete(&line, pos, Known { pools, groups, here: None, commands: None });
    }
    match tokenize(&line) {
        Ok(tokens) => {
            let mut last = None;
            for t in &tokens {
                offset_ok(&line, t.offset, "token")?;
                if last.is_some_and(|l| l >= t.offset) {
                    return Err(format!("token offsets not increasing: {tokens:?}"));
                }
                last = Some(t.offset);
            }
        }
        Err(e) => offset_ok(&line, e.offset, "lexer error")?,
    }
    match admin::parse(&line) {
        Ok(Some(command)) => {
            stored_form_reads_back(&command)?;
            Ok(if matches!(command, Command::MigrationCreate { .. }) { "job line parsed" } else { "parsed" })
        }
        Ok(None) => Ok("blank"),
        Err(e) => {
            if let Some(offset) = e.offset {
                offset_ok(&line, offset, "parse error")?;
            }
            let _ = e.render(&line);
            Ok(if e.code == ErrorCode::UnknownCommand { "unknown command" } else { "refused" })
        }
    }
}

fn job_options(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    let line = String::from_utf8_lossy(input);
    let Ok(args) = Args::parse(&line) else { return Ok("lexer error") };
    let mut made = 0;
    for o in &args.options {
        let v = o.value.as_deref().unwrap_or("");
        let _ = Interval::parse(v);
        let _ = SourceMode::parse(v);
        let _ = TargetMode::parse(v);
        let _ = parse_sticky(v);
        if o.name.ends_with("-when") {
            let _ = expr::parse_boolean(v, &expr::target_symbols).map_err(|e| e.render(v));
            let _ = expr::parse_boolean(v, &expr::lifetime_symbols).map_err(|e| e.render(v));
        }
    }
    let targets: Vec<String> = args.positional.iter().map(|t| t.text.clone()).collect();
    for kind in [JobKind::Copy, JobKind::Move, JobKind::Cache] {
        match definition::parse(kind, &grammar::Options(&args.options), &targets) {
            Ok(def) => {
                made += 1;
                if def.replicas < 1 || def.refresh == Some(0) || (def.permanent && def.order.is_some()) {
                    return Err(format!("a job definition that should have been refused: {def:?}"));
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let whole = format!("migration {} {line}", kind.as_str());
        let by_admin = admin::parse(&whole);
        if let Ok(Some(command)) = &by_admin {
            stored_form_reads_back(command)?;
        }
        // The admin command and the grammar (saved jobs, tests) read a job line alike.
        let by_grammar = grammar::parse_args(kind, &line);
        if let Err(e) = &by_grammar
            && let Some(offset) = e.offset
        {
            offset_ok(&line, offset, "job grammar error")?;
        }
        let admin_made =
            matches!(by_admin, Ok(Some(Command::MigrationCreate { .. } | Command::MigrationDryRun { .. })));
        let too_long = tidepool_p2p::message::line_too_long(whole.len()).is_some();
        if !too_long && admin_made != by_grammar.is_ok() {
            return Err(format!(
                "the admin command {} and the job grammar {} the line",
                if admin_made { "took" } else { "refused" },
                if by_grammar.is_ok() { "took" } else { "refused" }
            ));
        }
    }
    Ok(if made > 0 { "job defined" } else { "refused" })
}

/// Symbol values of each declared type, so that evaluation reaches every operator.
fn values(name: &str, variant: usize, ty: Option<Type>) -> Option<Value> {
    Some(match ty? {
        Type::Number => Value::Number([0.0, 1e12, -1.0, f64::NAN, f64::INFINITY, 3.0][(name.len() + variant) % 6]),
        Type::String => Value::String(["pool1", "", "é\\d", "pool12"][(name.len() + variant) % 4].to_string()),
        Type::Boolean => Value::Boolean(variant.is_multiple_of(2)),
    })
}

/// Whether `text` parsed and type-checked.
fn check_expression(text: &str, symbols: fn(&str) -> Option<Type>) -> Result<bool, String> {
    match expr::parse(text, &symbols) {
        Ok(e) => evaluate(&e, symbols).map(|()| true),
        Err(err) => {
            if err.offset > text.len() {
                return Err(format!("error offset {} beyond the {}-byte text", err.offset, text.len()));
            }
            let _ = err.render(text);
            Ok(false)
        }
    }
}

fn evaluate(e: &Expr, symbols: fn(&str) -> Option<Type>) -> Result<(), String> {
    for variant in 0..3 {
        let lookup = |name: &str| values(name, variant, symbols(name));
        match e.eval(&lookup) {
            Ok(v) if v.ty() != e.ty() => {
                return Err(format!("{:?} was checked as {} but evaluates to {v:?}", e.text(), e.ty()));
            }
            Ok(_) => {}
            Err(err) => {
                let _ = err.render(e.text());
            }
        }
    }
    Ok(())
}

fn expression(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    let text = String::from_utf8_lossy(input);
    let target = check_expression(&text, expr::target_symbols)?;
    let lifetime = check_expression(&text, expr::lifetime_symbols)?;
    let condition = match expr::parse_boolean(&text, &expr::lifetime_symbols) {
        Ok(e) => {
            let _ = e.eval_bool(&|name| values(name, 1, expr::lifetime_symbols(name)));
            true
        }
        Err(_) => false,
    };
    Ok(match (target || lifetime, condition) {
        (_, true) => "a valid condition",
        (true, false) => "valid, not a condition",
        (false, _) => "refused",
    })
}

fn saved(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    // The pool reads the stored bytes the same way (`migration_env::restore`).
    let text = String::from_utf8_lossy(input);
    let Ok(set) = Module::<PoolEnv>::parse_saved(&text) else { return Ok("not a saved set") };
    let mut restorable = 0;
    for job in set.jobs.into_iter().flatten() {
        let id_ok = job.id.parse::<JobId>().is_ok();
        match admin::parse(&job.command) {
            Ok(Some(command)) => {
                stored_form_reads_back(&command)?;
                restorable += usize::from(id_ok && matches!(command, Command::MigrationCreate { .. }));
            }
            Ok(None) => {}
            Err(e) => {
                let _ = e.render(&job.command);
            }
        }
    }
    Ok(if restorable > 0 { "a job to restore" } else { "nothing to restore" })
}

fn record_decode(_: &Ctx, input: &[u8]) -> Result<&'static str, String> {
    // The same bytes as a stored hold, and its owner as the migration module reads it.
    if let Some((until, owner)) = record::decode_hold(input) {
        if record::encode_hold(until, &owner) != input {
            return Err(format!("the hold ({until}, {owner:?}) does not encode to its bytes"));
        }
        if let Some(o) = HoldOwner::decode(&owner)
            && HoldOwner::decode(&o.encode()).as_ref() != Some(&o)
        {
            return Err(format!("the hold owner {o:?} does not read back"));
        }
    }
    let id: PnfsId = "0000A1B2C3D4E5F60718293A4B5C6D7E8F90".parse().expect("a valid pnfsid");
    let full = record::decode(id, input);
    let entry = record::decode_entry(input);
    if let Ok(e) = &entry {
        let _ = e.sticky_until(1_700_000_000_000);
    }
    let Ok(replica) = full else {
        return Ok(if entry.is_ok() { "only the index fields decode" } else { "refused" });
    };
    let entry = entry.map_err(|e| format!("decode reads the record but decode_entry does not: {e}"))?;
    let expiries: Vec<i64> = replica.sticky.iter().map(|s| s.expire).collect();
    if (entry.size, entry.state, entry.atime, &entry.expiries)
        != (replica.attrs.size, replica.state, replica.attrs.access_time, &expiries)
    {
        return Err(format!("decode_entry and decode disagree on {replica:?}"));
    }
    match record::decode(id, &record::encode(&replica)) {
        Ok(again) if again == replica => Ok("decoded"),
        other => Err(format!("{replica:?} encodes to a record that reads back as {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trickled_reading_gives_the_frames_of_a_straight_reading() {
        let ctx = Ctx::new();
        let mut bytes = gen_wire::encode(&ctx, &AdminRequest::Run { line: "rep ls".into() });
        bytes.extend(gen_wire::encode_data(&ctx, b"0123456789"));
        for chunk in [1, 3, 9, 1000] {
            let got = read_trickled(&bytes, chunk).expect("ends");
            assert_eq!(got.frames.len(), 2, "chunk {chunk}");
            assert_eq!(got.frames[1], (false, b"0123456789".to_vec()), "chunk {chunk}");
            assert_eq!(got.end, "", "chunk {chunk}");
        }
        let cut = read_trickled(&bytes[..bytes.len() - 1], 2).expect("ends");
        assert_eq!((cut.frames.len(), cut.end.as_str()), (1, "the peer closed the connection"));
        assert_eq!(frame(&ctx, &bytes), Ok("messages decoded"));
    }

    #[test]
    fn generated_handshakes_keep_the_roles_on_both_sides() {
        let ctx = Ctx::new();
        for side in 0u8..8 {
            let mut rng = super::super::Rng::new(u64::from(side));
            let mut input = gen_wire::handshake(&mut rng, &ctx);
            input[0] = side;
            assert!(handshake(&ctx, &input).is_ok(), "side {side}");
        }
    }
}
