//! Generators of binary inputs: frames of real messages, handshake exchanges and repository
//! records, valid first and then mutated (length fields, kind bytes, truncation, splicing,
//! byte edits), plus purely random bytes.

use tidepool_p2p::auth::{ClientAuth, Features, HandshakeReply, Hello, MAGIC, PROTOCOL_VERSION, Service};
use tidepool_p2p::frame::{FrameWriter, MAX_FRAME};
use tidepool_p2p::message::{
    AdminReply, AdminRequest, CommandDescription, CommitState, CopyAnswer, CopyFinished, CopyRequest, DataReply,
    DataRequest, Held, MigrationReply, MigrationRequest, PoolCost, PutRequest, SmallFetch, SmallOutcome,
};
use tidepool_p2p::model::{
    AccessLatency, Checksum, FileAttributes, ReplicaState, RetentionPolicy, SpaceInfo, StickyRecord,
};
use tidepool_p2p::{AttemptId, JobId, PnfsId, PoolName, RemoteError, TaskId, TransferId};
use tidepool_repository::{Replica, record};

use super::{Ctx, Rng, mutate};

/// Pieces that strings in messages and records are made of.
const STRING_PIECES: &[&str] = &[
    "",
    "a",
    "pool2",
    "atlas:default",
    "cms:raw",
    "osm",
    "PinManager-1",
    "alice",
    "rep ls",
    "migration copy -- pool2",
    "é",
    "日本",
    "\u{0}",
    "\n",
    " ",
    "\"",
    "\\",
];

pub fn string(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(4) {
        s.push_str(rng.word(STRING_PIECES));
    }
    if rng.chance(1, 20) {
        s.push_str(&"z".repeat(rng.below(3000)));
    }
    s
}

fn opt<T>(rng: &mut Rng, f: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    if rng.chance(1, 2) { Some(f(rng)) } else { None }
}

fn number(rng: &mut Rng) -> u64 {
    match rng.below(4) {
        0 => rng.below(10) as u64,
        1 => *rng.pick(&[u64::MAX, u64::MAX - 1, 1 << 32, (1 << 32) - 1, 1 << 63, MAX_FRAME as u64]),
        2 => rng.next_u64() >> rng.below(64),
        _ => rng.below(1 << 20) as u64,
    }
}

fn signed(rng: &mut Rng) -> i64 {
    match rng.below(3) {
        0 => *rng.pick(&[-1, 0, 1, i64::MIN, i64::MAX]),
        1 => number(rng) as i64,
        _ => 1_700_000_000_000 + rng.below(1 << 30) as i64,
    }
}

pub fn pnfsid(rng: &mut Rng) -> PnfsId {
    let mut raw = [0u8; 16];
    raw.iter_mut().for_each(|b| *b = rng.byte());
    PnfsId::from_random(raw)
}

fn pool(rng: &mut Rng) -> PoolName {
    format!("pool{}", rng.below(100)).parse().expect("a valid pool name")
}

fn sticky(rng: &mut Rng) -> Vec<StickyRecord> {
    (0..rng.below(4)).map(|_| StickyRecord::new(string(rng), signed(rng))).collect()
}

fn state(rng: &mut Rng) -> ReplicaState {
    *rng.pick(&ReplicaState::ALL)
}

fn access_latency(rng: &mut Rng) -> AccessLatency {
    *rng.pick(&[AccessLatency::Online, AccessLatency::Nearline])
}

fn retention_policy(rng: &mut Rng) -> RetentionPolicy {
    *rng.pick(&[RetentionPolicy::Custodial, RetentionPolicy::Replica, RetentionPolicy::Output])
}

pub fn attributes(rng: &mut Rng) -> FileAttributes {
    FileAttributes {
        pnfsid: pnfsid(rng),
        size: number(rng),
        checksum: opt(rng, |r| Checksum::Adler32(r.next_u64() as u32)),
        storage_class: opt(rng, string),
        cache_class: opt(rng, string),
        access_latency: opt(rng, access_latency),
        retention_policy: opt(rng, retention_policy),
        hsm: opt(rng, string),
        creation_time: signed(rng),
        access_time: signed(rng),
    }
}

fn remote_error(rng: &mut Rng) -> RemoteError {
    RemoteError { code: rng.next_u64() as u32 % 30_000, message: string(rng) }
}

fn space(rng: &mut Rng) -> SpaceInfo {
    SpaceInfo {
        total: number(rng),
        used: number(rng),
        free: number(rng),
        precious: number(rng),
        removable: number(rng),
    }
}

fn job_id(rng: &mut Rng) -> JobId {
    format!("{}", rng.below(1000)).parse().expect("a valid job id")
}

fn migration_request(rng: &mut Rng) -> MigrationRequest {
    match rng.below(8) {
        0 => MigrationRequest::PoolInfo { job: opt(rng, job_id) },
        1 => MigrationRequest::Locate { pnfsids: (0..rng.below(20)).map(|_| pnfsid(rng)).collect() },
        2 => MigrationRequest::Copy(copy_request(rng)),
        3 => MigrationRequest::Ping { attempt: AttemptId(number(rng)) },
        4 => MigrationRequest::Cancel { attempt: AttemptId(number(rng)), reason: string(rng) },
        5 => MigrationRequest::CopyBatch((0..rng.below(5)).map(|_| copy_request(rng)).collect()),
        6 => MigrationRequest::FinishedBatch((0..rng.below(5)).map(|_| copy_finished(rng)).collect()),
        _ => MigrationRequest::Finished(copy_finished(rng)),
    }
}

fn copy_request(rng: &mut Rng) -> CopyRequest {
    CopyRequest {
        attempt: AttemptId(number(rng)),
        job: job_id(rng),
        task: TaskId(number(rng)),
        attributes: attributes(rng),
        state: state(rng),
        sticky: sticky(rng),
        verify: rng.chance(1, 2),
        atime: opt(rng, signed),
        force_source_mode: rng.chance(1, 2),
        meta_only: rng.chance(1, 2),
        releases_source: rng.chance(1, 2),
    }
}

fn copy_finished(rng: &mut Rng) -> CopyFinished {
    CopyFinished {
        attempt: AttemptId(number(rng)),
        target: pool(rng),
        pnfsid: pnfsid(rng),
        result: if rng.chance(1, 2) { Ok(()) } else { Err(remote_error(rng)) },
    }
}

fn migration_reply(rng: &mut Rng) -> MigrationReply {
    match rng.below(7) {
        6 => MigrationReply::Batch(
            (0..rng.below(5))
                .map(|_| if rng.chance(1, 2) { CopyAnswer::Accepted } else { CopyAnswer::Refused(remote_error(rng)) })
                .collect(),
        ),
        0 => MigrationReply::PoolInfo(PoolCost {
            space: space(rng),
            load: rng.next_u64() as u32,
            accepts: rng.chance(1, 2),
            enabled: rng.chance(1, 2),
            run: rng.next_u64(),
        }),
        1 => MigrationReply::Located {
            held: (0..rng.below(10))
                .map(|_| Held {
                    pnfsid: pnfsid(rng),
                    state: state(rng),
                    sticky: sticky(rng),
                    checksum: opt(rng, |r| Checksum::Adler32(r.next_u64() as u32)),
                })
                .collect(),
        },
        2 => MigrationReply::Accepted,
        3 => MigrationReply::Alive(rng.chance(1, 2)),
        4 => MigrationReply::Ack,
        _ => MigrationReply::Error(remote_error(rng)),
    }
}

fn data_request(rng: &mut Rng) -> DataRequest {
    match rng.below(8) {
        0 => DataRequest::Put(PutRequest {
            size: number(rng),
            storage_class: opt(rng, string),
            cache_class: opt(rng, string),
            access_latency: opt(rng, access_latency),
            retention_policy: opt(rng, retention_policy),
            hsm: opt(rng, string),
            state: *rng.pick(&[CommitState::Cached, CommitState::Precious]),
            sticky: sticky(rng),
        }),
        1 => DataRequest::PutEnd { checksum: Checksum::Adler32(rng.next_u64() as u32) },
        2 => DataRequest::Get { pnfsid: pnfsid(rng) },
        3 => DataRequest::Fetch {
            transfer: TransferId(number(rng)),
            pnfsid: pnfsid(rng),
            force_source_mode: rng.chance(1, 2),
        },
        4 => DataRequest::FetchStart { transfer: TransferId(number(rng)), offset: number(rng) },
        5 => DataRequest::FetchAbort { transfer: TransferId(number(rng)) },
        6 => DataRequest::Migration(migration_request(rng)),
        _ => DataRequest::FetchSmall {
            items: (0..rng.below(70))
                .map(|_| SmallFetch {
                    transfer: TransferId(number(rng)),
                    pnfsid: pnfsid(rng),
                    force_source_mode: rng.chance(1, 2),
                })
                .collect(),
            max_size: number(rng),
            max_bytes: number(rng),
        },
    }
}

fn data_reply(rng: &mut Rng) -> DataReply {
    match rng.below(10) {
        0 => DataReply::PutReady { pnfsid: pnfsid(rng) },
        1 => DataReply::PutCommitted { pnfsid: pnfsid(rng), checksum: Checksum::Adler32(rng.next_u64() as u32) },
        2 => DataReply::GetReady { attributes: attributes(rng) },
        3 => DataReply::GetEnd,
        4 => DataReply::Error(remote_error(rng)),
        5 => DataReply::FetchReady { transfer: TransferId(number(rng)), attributes: attributes(rng) },
        6 => DataReply::FetchEnd { transfer: TransferId(number(rng)) },
        7 => DataReply::Migration(migration_reply(rng)),
        8 => DataReply::SmallItem {
            transfer: TransferId(number(rng)),
            outcome: match rng.below(4) {
                0 => SmallOutcome::Sent(attributes(rng)),
                1 => SmallOutcome::TooLarge { size: number(rng) },
                2 => SmallOutcome::Later,
                _ => SmallOutcome::Refused(remote_error(rng)),
            },
        },
        _ => DataReply::FetchSmallEnd,
    }
}

fn service(rng: &mut Rng) -> Service {
    *rng.pick(&[Service::Admin, Service::Data])
}

fn hello(rng: &mut Rng) -> Hello {
    Hello {
        magic: if rng.chance(7, 8) { MAGIC } else { *b"TIDEPOOX" },
        version: if rng.chance(7, 8) { PROTOCOL_VERSION } else { rng.next_u64() as u16 },
        pool: string(rng),
        service: service(rng),
        features: features(rng),
    }
}

fn features(rng: &mut Rng) -> Features {
    *rng.pick(&[Features::ALL, Features::NONE, Features::FETCH_SMALL])
}

fn client_auth(rng: &mut Rng, service_wanted: Service) -> ClientAuth {
    ClientAuth {
        version: if rng.chance(7, 8) { PROTOCOL_VERSION } else { rng.next_u64() as u16 },
        client: if rng.chance(1, 2) { "pool2".into() } else { string(rng) },
        service: if rng.chance(7, 8) { service_wanted } else { service(rng) },
        features: features(rng),
    }
}

fn handshake_reply(rng: &mut Rng) -> HandshakeReply {
    if rng.chance(2, 3) { HandshakeReply::Welcome } else { HandshakeReply::Refused(remote_error(rng)) }
}

/// Encodes `msg` as one message frame, through the real `FrameWriter`.
pub fn encode<T: serde::Serialize>(ctx: &Ctx, msg: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ctx.block_on(async {
        let mut w = FrameWriter::new(&mut out);
        w.send(msg).await.expect("writing to memory cannot fail");
    });
    out
}

/// Encodes one data frame of `chunk`.
pub fn encode_data(ctx: &Ctx, chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ctx.block_on(async {
        let mut w = FrameWriter::new(&mut out);
        w.send_data(chunk).await.expect("writing to memory cannot fail");
        w.flush().await.expect("writing to memory cannot fail");
    });
    out
}

/// One frame of any message type of the protocol, or a data frame.
fn any_frame(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    match rng.below(10) {
        0 => encode(ctx, &AdminRequest::Run { line: string(rng) }),
        1 => encode(ctx, if rng.below(2) == 0 { &AdminRequest::Describe } else { &AdminRequest::DescribeDetails }),
        2 => encode(
            ctx,
            &match rng.below(4) {
                0 => AdminReply::Output(string(rng)),
                3 => AdminReply::CommandDetails(string(rng)),
                1 => AdminReply::Finished { error: opt(rng, remote_error) },
                _ => AdminReply::Commands(
                    (0..rng.below(5))
                        .map(|_| CommandDescription {
                            name: string(rng),
                            summary: string(rng),
                            options: (0..rng.below(4)).map(|_| string(rng)).collect(),
                        })
                        .collect(),
                ),
            },
        ),
        3 | 4 => encode(ctx, &data_request(rng)),
        5 | 6 => encode(ctx, &data_reply(rng)),
        7 => match rng.below(3) {
            0 => encode(ctx, &hello(rng)),
            1 => {
                let s = service(rng);
                encode(ctx, &client_auth(rng, s))
            }
            _ => encode(ctx, &handshake_reply(rng)),
        },
        _ => {
            let n = if rng.chance(1, 10) { rng.below(8192) } else { rng.below(64) };
            encode_data(ctx, &rng.bytes(n))
        }
    }
}

/// Frame-aware edits of a sequence of frames starting at `starts`: a length field or a kind
/// byte changed, or the sequence cut inside a frame.
fn mutate_frames(rng: &mut Rng, data: &mut Vec<u8>, starts: &[usize]) {
    if starts.is_empty() {
        return;
    }
    let at = *rng.pick(starts);
    if at + 5 > data.len() {
        return;
    }
    let len = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    match rng.below(3) {
        0 => {
            let (any, small) = (rng.next_u64() as u32, rng.below(256) as u32);
            let new = *rng.pick(&[
                0,
                1,
                len.wrapping_sub(1),
                len.wrapping_add(1),
                len.wrapping_mul(2),
                MAX_FRAME as u32,
                MAX_FRAME as u32 + 1,
                u32::MAX,
                any,
                small,
            ]);
            data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        }
        1 => {
            let any = rng.byte();
            data[at + 4] = *rng.pick(&[0, 1, 2, 0xff, any]);
        }
        _ => data.truncate(at + rng.below(len as usize + 5)),
    }
}

/// A sequence of frames, with the offset of each one's header.
fn frame_sequence(rng: &mut Rng, ctx: &Ctx, n: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..n {
        starts.push(out.len());
        out.extend(any_frame(rng, ctx));
    }
    (out, starts)
}

/// Input of the frame target: frames of real messages, mutated, or random bytes.
pub fn frames(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    if rng.chance(1, 10) {
        let n = rng.below(512);
        return rng.bytes(n);
    }
    let n = 1 + rng.below(4);
    let (mut data, starts) = frame_sequence(rng, ctx, n);
    match rng.below(10) {
        0 | 1 => {}
        2..=4 => mutate_frames(rng, &mut data, &starts),
        5 => {
            let n = 1 + rng.below(2);
            let (other, _) = frame_sequence(rng, ctx, n);
            mutate(rng, &mut data, &[], &other);
        }
        _ => {
            mutate_frames(rng, &mut data, &starts);
            mutate(rng, &mut data, &[&MAGIC, &[0, 0, 0, 0], &[0xff; 5], &[0x80; 10]], &[]);
        }
    }
    data
}

/// Input of the handshake target: byte 0 says which side runs (bit 0: the server's `accept`,
/// else the client's `connect`), for which service (bit 1) and, for the server, whose
/// certificate the peer holds (bit 2: pool2's, else a client's); the rest is what the peer
/// sends.
pub fn handshake(rng: &mut Rng, ctx: &Ctx) -> Vec<u8> {
    let side = rng.byte();
    let service = if side & 2 == 0 { Service::Admin } else { Service::Data };
    let mut peer = Vec::new();
    let mut starts = Vec::new();
    if rng.chance(1, 10) {
        let n = rng.below(300);
        peer = rng.bytes(n);
    } else if side & 1 == 1 {
        starts.push(0);
        peer.extend(encode(ctx, &client_auth(rng, service)));
        if rng.chance(1, 4) {
            starts.push(peer.len());
            peer.extend(any_frame(rng, ctx));
        }
    } else {
        starts.push(0);
        peer.extend(encode(ctx, &hello(rng)));
        if rng.chance(7, 8) {
            starts.push(peer.len());
            peer.extend(encode(ctx, &handshake_reply(rng)));
        }
    }
    match rng.below(4) {
        0 => {}
        1 => mutate_frames(rng, &mut peer, &starts),
        _ => mutate(rng, &mut peer, &[&MAGIC, &PROTOCOL_VERSION.to_le_bytes()], &[]),
    }
    let mut input = vec![side];
    input.extend(peer);
    input
}

/// A replica as the repository would hold it.
pub fn replica(rng: &mut Rng) -> Replica {
    Replica { attrs: attributes(rng), state: state(rng), sticky: sticky(rng) }
}

/// Input of the record decoder: encoded records, mutated (version byte, varints made long or
/// overlong, truncation, splices of another record, byte edits), or random bytes.
pub fn record_bytes(rng: &mut Rng, _ctx: &Ctx) -> Vec<u8> {
    if rng.chance(1, 10) {
        let n = rng.below(200);
        return rng.bytes(n);
    }
    let mut data = record::encode(&replica(rng));
    match rng.below(8) {
        0 | 1 => {}
        2 => data[0] = rng.byte(),
        3 => data.truncate(rng.below(data.len())),
        4 => {
            let at = 1 + rng.below(data.len() - 1);
            let run = vec![0xffu8; 1 + rng.below(12)];
            data.splice(at..at, run);
        }
        5 => {
            let other = record::encode(&replica(rng));
            mutate(rng, &mut data, &[], &other);
        }
        _ => mutate(rng, &mut data, &[&[0x80; 10], &[0xff, 0xff, 0xff, 0xff, 0x0f], &[0x01], &[0x00]], &[]),
    }
    data
}
