//! Writes the seed corpus, `fuzz/corpus/<target>/`: a few valid inputs of
//! each kind (real frames from a real connection, real key strings) and the
//! edge and hostile cases the security review cares about. The files are
//! committed; this regenerates them deterministically:
//!
//! ```sh
//! cd fuzz && cargo test --test seeds -- --ignored
//! ```
//!
//! A seed's file name says what it is. Nothing random: same code, same bytes.

use std::fs;
use std::path::PathBuf;

use meshsync_core::entry::{ChunkRef, Content, FileEntry, FileKind, Timestamp};
use meshsync_core::ids::{DeviceId, Hash, ShortId};
use meshsync_core::keys::{FolderKey, ReadWriteKey};
use meshsync_core::path::RelPath;
use meshsync_core::version::VersionVector;
use meshsync_fuzz::core_targets::key_check_character;
use meshsync_fuzz::proto_targets::{FOLDER_SECRET, Scenario, connection_at};
use meshsync_proto::chunk::{ChunkRequest, ChunkResponse, ChunkRunRequest};
use meshsync_proto::{CloseCode, Connection, FolderOffer};

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn write_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0);
    for b in bytes {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((acc >> bits) & 31) as usize] as char);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(A[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `letter ‖ base32(payload) ‖ check`, sealed with a correct check.
fn sealed_key(letter: char, payload: &[u8]) -> String {
    let body = format!("{letter}{}", base32(payload));
    let check = key_check_character(body.as_bytes()).unwrap();
    format!("{body}{}", check as char)
}

fn entry(path: &str, sequence: u64, size: u64) -> FileEntry {
    let mut version = VersionVector::new();
    version.bump(ShortId(2));
    let is_file = size > 0;
    FileEntry {
        path: RelPath::new(path).unwrap(),
        kind: if is_file {
            FileKind::File
        } else {
            FileKind::Directory
        },
        size,
        mtime: Timestamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        permissions: 0o644,
        symlink_target: None,
        content: is_file.then(|| Content {
            hash: Hash::of(path.as_bytes()),
            chunk_avg: 65536,
            chunks: vec![ChunkRef {
                hash: Hash::of(b"chunk"),
                len: size as u32,
            }],
        }),
        version,
        deleted: false,
        sequence,
    }
}

fn frames(connection: &mut Connection) -> Vec<u8> {
    std::iter::from_fn(|| connection.poll_transmit())
        .flatten()
        .collect()
}

fn with_scenario(scenario: u8, stream: &[u8]) -> Vec<u8> {
    let mut v = vec![scenario];
    v.extend_from_slice(stream);
    v
}

/// An IndexBatch frame with one entry whose path is `path`, spelled in raw
/// postcard (so any path can be written, valid or not), unsigned.
fn raw_batch(share: &[u8; 32], path: &[u8]) -> Vec<u8> {
    let mut p = vec![6u8];
    p.extend_from_slice(share);
    p.extend_from_slice(&[1, 1, 0, 1]); // first 1, last 1, incomplete, 1 entry
    p.push(path.len() as u8);
    p.extend_from_slice(path);
    // directory, size 0, mtime 0.0, mode 0, no target, no content,
    // version {2: 1}, live, sequence 1
    p.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 1, 2, 1, 0, 1]);
    p.push(0); // no signature
    let mut f = (p.len() as u32).to_be_bytes().to_vec();
    f.extend(p);
    f
}

#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let key = ReadWriteKey::from_secret(&[9; 32]);
    let folder = ReadWriteKey::from_secret(&FOLDER_SECRET);
    let share = folder.share_id();

    // --- rel_path
    write_seeds(
        "rel_path",
        &[
            ("plain", b"docs/a.txt".to_vec()),
            ("unicode", "ünïcödé 😀/名前.txt".as_bytes().to_vec()),
            ("nfd", "e\u{301}te\u{301}.txt".as_bytes().to_vec()),
            ("parent", b"a/../../etc/passwd".to_vec()),
            ("absolute", b"/etc/passwd".to_vec()),
            ("drive", b"C:/Windows".to_vec()),
            ("backslash", b"a\\..\\b".to_vec()),
            ("nul", b"a\0b".to_vec()),
            ("empty-component", b"a//b/./c/".to_vec()),
            ("internal", b".meshsync/partial/x".to_vec()),
            ("temp", b"d/.meshsync-tmp-1-2".to_vec()),
            ("long-name", vec![b'n'; 256]),
            ("long-path", b"abcdefg/".repeat(513)),
            ("windows-reserved", b"CON.txt/aux/a:b".to_vec()),
            ("not-utf8", b"ok/\xff\xfe".to_vec()),
        ],
    );

    // --- folder_key
    let rw = key.to_key_string().to_string();
    let ro = key.read_only().to_key_string().to_string();
    let enc = key.encrypted().to_key_string().to_string();
    let mut typo = rw.clone().into_bytes();
    typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
    let mut swapped = rw.clone().into_bytes();
    swapped.swap(5, 6);
    let grouped: String = rw
        .to_lowercase()
        .as_bytes()
        .chunks(6)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("-");
    let mut small_order = [0u8; 32];
    small_order[0] = 1; // the identity point
    let mut trailing = [0xffu8; 32];
    trailing[31] = 0xff;
    let noncanonical = {
        // 52 characters whose last one has non-zero trailing bits.
        let mut body = format!("W{}", base32(&[0x11; 32]));
        body.pop();
        body.push('7');
        let check = key_check_character(body.as_bytes()).unwrap();
        format!("{body}{}", check as char)
    };
    write_seeds(
        "folder_key",
        &[
            ("read-write", rw.clone().into_bytes()),
            ("read-only", ro.into_bytes()),
            ("encrypted", enc.into_bytes()),
            ("grouped-lowercase", grouped.into_bytes()),
            ("typo", typo),
            ("swap", swapped),
            ("truncated", rw.as_bytes()[..40].to_vec()),
            ("padding", format!("{rw}====").into_bytes()),
            (
                "small-order-verify-key",
                sealed_key('E', &small_order).into_bytes(),
            ),
            ("read-only-bad-point", {
                let mut p = trailing.to_vec();
                p.extend_from_slice(&[3; 32]);
                sealed_key('R', &p).into_bytes()
            }),
            ("non-canonical", noncanonical.into_bytes()),
            ("unknown-letter", b"XAAAA".to_vec()),
            ("empty", Vec::new()),
        ],
    );

    // --- device_id
    let id = DeviceId::from_bytes([0x42; 32]).to_string();
    let mut bad = id.clone().into_bytes();
    bad[3] = if bad[3] == b'A' { b'B' } else { b'A' };
    write_seeds(
        "device_id",
        &[
            ("device", id.clone().into_bytes()),
            (
                "device-lowercase-no-dashes",
                id.to_lowercase().replace('-', "").into_bytes(),
            ),
            ("device-typo", bad),
            ("share", share.to_string().into_bytes()),
            (
                "zero",
                DeviceId::from_bytes([0; 32]).to_string().into_bytes(),
            ),
            (
                "ones",
                DeviceId::from_bytes([0xff; 32]).to_string().into_bytes(),
            ),
            ("digits-0189", b"0189".to_vec()),
        ],
    );

    // --- ignore_rules
    write_seeds(
        "ignore_rules",
        &[
            (
                "typical",
                b"# build output\n/target/\n*.o\n!keep.o\nnode_modules/\n**/cache/**\ndocs/*.pdf\n"
                    .to_vec(),
            ),
            (
                "classes",
                b"[a-c]?.txt\n[!x]*\n\\#not-a-comment\n\\!bang\n".to_vec(),
            ),
            ("bad-class", b"ok\n[z-a]\n".to_vec()),
            ("unclosed", b"a\n[abc\n".to_vec()),
            ("only-negation", b"!\n!!\n/\n//\n**\n***\n".to_vec()),
            ("deep", b"a/**/b/**/c/**/d/**/e\n".to_vec()),
            ("crlf", b"*.tmp\r\n!a.tmp\r\n".to_vec()),
            ("long", "{a,b}".repeat(200).into_bytes()),
        ],
    );

    // --- control_stream, message, frames: real frames from real peers
    let (_, _, mut peer) = connection_at(Scenario::AwaitingHello);
    let hello = frames(&mut peer);

    let (_, _, mut peer) = connection_at(Scenario::Negotiated);
    peer.ping(7).unwrap();
    let ping = frames(&mut peer);
    peer.open_folder(
        &FolderKey::ReadWrite(folder.clone()),
        FolderOffer::fresh(3, 2),
    )
    .unwrap();
    let offer = frames(&mut peer);
    let (_, _, mut stranger) = connection_at(Scenario::Negotiated);
    stranger
        .open_folder(&FolderKey::ReadWrite(key.clone()), FolderOffer::fresh(3, 0))
        .unwrap();
    let unknown_offer = frames(&mut stranger);

    let (_, _, mut ro_peer) = connection_at(Scenario::OpenReadOnlyPeer);
    ro_peer
        .send_index_batch(share, 1, 3, &[entry("a", 1, 0), entry("a/b.txt", 3, 10)])
        .unwrap();
    let unsigned_batch = frames(&mut ro_peer);

    // A big file's entry, then its edit as a chunk-list patch (version 5).
    let big = |sequence: u64, chunks: Vec<u32>| {
        let mut file = entry("big.bin", sequence, 1);
        let content = file.content.as_mut().unwrap();
        content.chunks = chunks
            .iter()
            .map(|n| ChunkRef {
                hash: Hash::of(&n.to_le_bytes()),
                len: 1000,
            })
            .collect();
        file.size = 1000 * chunks.len() as u64;
        file
    };
    let (_, _, mut patcher) = connection_at(Scenario::OpenReadOnlyPeer);
    patcher
        .send_index_batch(share, 1, 1, &[big(1, (0..64).collect())])
        .unwrap();
    let first_big = frames(&mut patcher);
    let mut edited: Vec<u32> = (0..64).collect();
    edited[10] = 1000;
    patcher
        .send_index_batch(share, 2, 2, &[big(2, edited)])
        .unwrap();
    let patch = frames(&mut patcher);

    let (_, _, mut rw_peer) = connection_at(Scenario::OpenReadWritePeer);
    rw_peer
        .send_index_batch(
            share,
            1,
            2,
            &[entry("docs", 1, 0), entry("docs/x.bin", 2, 100)],
        )
        .unwrap();
    rw_peer
        .send_index_batch(share, 3, 1000, &[entry("z", 1000, 4)])
        .unwrap();
    rw_peer
        .send_progress(share, RelPath::new("docs/x.bin").unwrap(), 1, 2)
        .unwrap();
    rw_peer.ping(9).unwrap();
    let signed_batches = frames(&mut rw_peer);
    let (_, _, mut closer) = connection_at(Scenario::OpenReadWritePeer);
    closer.close(CloseCode::Shutdown, "bye");
    let close = frames(&mut closer);
    // A stranger's offer of a folder this side does not hold is refused.
    let (mut refuser, keys, _) = connection_at(Scenario::Negotiated);
    refuser.handle_bytes(&unknown_offer, &keys[..]).unwrap();
    let refused = frames(&mut refuser);

    let sb = share.as_bytes();
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("batch-parent-path", raw_batch(sb, b"../x")),
        ("batch-absolute-path", raw_batch(sb, b"/etc/passwd")),
        ("batch-nul-path", raw_batch(sb, b"a\0b")),
        ("batch-internal-path", raw_batch(sb, b".meshsync/x")),
        ("batch-backslash-path", raw_batch(sb, b"..\\x")),
        ("header-4gib", vec![0xff, 0xff, 0xff, 0xff, 6]),
        ("header-64kib-plus-1", vec![0, 1, 0, 1, 0]),
        ("header-16mib-plus-1", vec![1, 0, 0, 1, 6]),
        ("empty-frame", vec![0, 0, 0, 0]),
        ("unknown-type", vec![0, 0, 0, 1, 99]),
    ];

    let mut control: Vec<(String, Vec<u8>)> = vec![
        ("awaiting-hello".into(), with_scenario(0, &hello)),
        ("negotiated-ping".into(), with_scenario(1, &ping)),
        ("negotiated-offer".into(), with_scenario(1, &offer)),
        (
            "negotiated-unknown-offer".into(),
            with_scenario(1, &unknown_offer),
        ),
        (
            "read-only-peer-batch".into(),
            with_scenario(2, &unsigned_batch),
        ),
        (
            "read-write-peer-batches".into(),
            with_scenario(3, &signed_batches),
        ),
        (
            "read-write-peer-unsigned".into(),
            with_scenario(3, &unsigned_batch),
        ),
        (
            "read-only-peer-patch".into(),
            with_scenario(2, &[first_big.clone(), patch.clone()].concat()),
        ),
        ("close".into(), with_scenario(3, &close)),
        ("second-hello".into(), with_scenario(1, &hello)),
    ];
    for (name, bytes) in &hostile {
        control.push((format!("hostile-{name}"), with_scenario(3, bytes)));
        control.push((format!("hostile-ro-{name}"), with_scenario(2, bytes)));
    }
    let control: Vec<(&str, Vec<u8>)> = control
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    write_seeds("control_stream", &control);

    let payload = |frame: &[u8]| frame[4..].to_vec();
    let first_frame = |stream: &[u8]| {
        let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        stream[..4 + len].to_vec()
    };
    write_seeds(
        "message",
        &[
            ("hello", payload(&hello)),
            ("ping", payload(&ping)),
            ("open-folder", payload(&offer)),
            ("index-batch-unsigned", payload(&unsigned_batch)),
            ("index-batch-signed", payload(&first_frame(&signed_batches))),
            ("index-patch", payload(&patch)),
            ("close", payload(&close)),
            ("folder-refused", payload(&refused)),
            ("batch-parent-path", payload(&raw_batch(sb, b"../x"))),
            ("batch-nul-path", payload(&raw_batch(sb, b"a\0b"))),
            ("huge-count", {
                let mut p = vec![6];
                p.extend_from_slice(sb);
                p.extend_from_slice(&[1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]);
                p
            }),
            ("huge-string", vec![0, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ],
    );
    write_seeds(
        "frames",
        &[
            (
                "stream",
                [hello.clone(), ping.clone(), offer.clone()].concat(),
            ),
            ("batches", signed_batches.clone()),
            ("header-4gib", vec![0xff, 0xff, 0xff, 0xff]),
            ("truncated", hello[..hello.len() - 1].to_vec()),
            ("empty-frames", vec![0; 16]),
        ],
    );

    // --- chunk_stream
    let chunk = b"hello, chunk".to_vec();
    let request = ChunkRequest {
        share,
        hash: Hash::of(&chunk),
        len: chunk.len() as u32,
    };
    let found = [
        &request.encode()[..],
        &ChunkResponse::found(&request).encode()[..],
        &chunk,
    ]
    .concat();
    let mut corrupt = found.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    let mut too_long = found.clone();
    too_long.push(0);
    let mut huge = request;
    huge.len = meshsync_proto::limits::MAX_REQUEST_LEN;
    let mut bad_kind = request.encode().to_vec();
    bad_kind[0] = 2;
    write_seeds(
        "chunk_stream",
        &[
            ("found", found.clone()),
            ("corrupt", corrupt),
            ("too-long", too_long),
            ("truncated", found[..found.len() - 3].to_vec()),
            (
                "not-found",
                [
                    &request.encode()[..],
                    &ChunkResponse::not_found().encode()[..],
                ]
                .concat(),
            ),
            ("max-len", huge.encode().to_vec()),
            // A request just over the plaintext chunk limit (a storage-only
            // peer's cipher chunk): the oracle once said 16 MiB was the most.
            ("over-plain-len", {
                let mut r = request;
                r.len = meshsync_proto::limits::MAX_CHUNK_LEN + 1;
                r.encode().to_vec()
            }),
            ("bad-kind", bad_kind),
            // A delta request (version 5): the signature of a 2 KiB base,
            // then (for the oracle) an edited copy as the responder's chunk.
            ("delta-edit", {
                let base: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 251) as u8).collect();
                let mut edited = base.clone();
                edited[1000..1010].copy_from_slice(b"0123456789");
                let signature = meshsync_proto::delta::signature(&base);
                let request = meshsync_proto::delta::DeltaRequest {
                    share,
                    hash: Hash::of(&edited),
                    len: edited.len() as u32,
                    signature_len: signature.len() as u32,
                };
                [&request.encode_header()[..], &signature, &edited].concat()
            }),
            // A run (version 4): two chunks asked, the first answered.
            ("run-two-chunks", {
                let run = ChunkRunRequest {
                    share,
                    chunks: vec![
                        ChunkRef {
                            hash: request.hash,
                            len: request.len,
                        },
                        ChunkRef {
                            hash: Hash::of(b"second"),
                            len: 6,
                        },
                    ],
                };
                [
                    &run.encode()[..],
                    &ChunkResponse::found(&request).encode()[..],
                    &chunk,
                ]
                .concat()
            }),
            ("zero-len", {
                let mut r = request.encode().to_vec();
                r[65..69].copy_from_slice(&[0; 4]);
                r
            }),
        ],
    );
}

/// Writes the seeds of LAN announcements (`corpus/lan_announcement/`) and of
/// peer exchange (`pex-*` in `corpus/control_stream/` and `peers*` in
/// `corpus/message/`), and nothing else:
///
/// ```sh
/// cd fuzz && cargo test --test seeds -- --ignored write_discovery_seed_corpus
/// ```
#[test]
#[ignore = "writes fuzz/corpus; run by hand"]
fn write_discovery_seed_corpus() {
    use meshsync_core::keys::discovery::LanTagKey;
    use meshsync_proto::lan;
    use meshsync_proto::message::{Message, PeerAddresses, Peers};

    let folder = ReadWriteKey::from_secret(&FOLDER_SECRET);
    let share = folder.share_id();
    let ours = LanTagKey::new(folder.access_key());
    let other = LanTagKey::new(ReadWriteKey::from_secret(&[0x66; 32]).access_key());
    let device = DeviceId::from_bytes([0x42; 32]);
    let addrs: Vec<std::net::IpAddr> =
        vec!["192.168.1.20".parse().unwrap(), "fd00::20".parse().unwrap()];
    let valid = lan::encode(&device, 5_000_000, 22000, &addrs, &[ours.clone()]).remove(0);
    let many: Vec<std::net::IpAddr> = (1..=16u8)
        .map(|i| std::net::IpAddr::from([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i]))
        .collect();
    let keys: Vec<LanTagKey> = (0..31)
        .map(|i| LanTagKey::new(ReadWriteKey::from_secret(&[i; 32]).access_key()))
        .chain([ours.clone()])
        .collect();
    let largest = lan::encode(&device, 1, 1, &many, &keys).remove(0);
    let with = |at: usize, b: u8| {
        let mut d = valid.clone();
        d[at] = b;
        d
    };
    write_seeds(
        "lan_announcement",
        &[
            ("valid-our-folder", valid.clone()),
            (
                "valid-other-folder",
                lan::encode(&device, 5_000_000, 22000, &addrs, &[other]).remove(0),
            ),
            ("largest", largest),
            ("bad-magic", with(0, b'X')),
            ("version-2", with(4, 2)),
            ("zero-port", {
                let mut d = with(45, 0);
                d[46] = 0;
                d
            }),
            ("too-many-addresses", with(47, 17)),
            ("bad-family", with(48, 5)),
            ("multicast-address", with(49, 239)),
            ("no-tags", with(70, 0)),
            ("tag-count-past-end", with(70, 2)),
            ("truncated", valid[..valid.len() - 1].to_vec()),
            ("trailing-byte", [valid.clone(), vec![0]].concat()),
            ("too-long", vec![b'M'; lan::MAX_ANNOUNCEMENT_LEN + 1]),
        ],
    );

    // Peer exchange on a connection with the folder open (version 2).
    let (_, _, mut rw_peer) = connection_at(Scenario::OpenReadWritePeer);
    rw_peer
        .send_peers(
            share,
            vec![
                PeerAddresses {
                    device: DeviceId::from_bytes([7; 32]),
                    addresses: vec![
                        "192.0.2.7:22000".parse().unwrap(),
                        "[2001:db8::7]:22000".parse().unwrap(),
                    ],
                },
                PeerAddresses {
                    device: DeviceId::from_bytes([8; 32]),
                    addresses: vec!["127.0.0.1:5".parse().unwrap()],
                },
            ],
        )
        .unwrap();
    let peers = frames(&mut rw_peer);
    // Raw lists the machine refuses to send: naming the receiver, an
    // unusable address.
    let raw =
        |peers: Vec<PeerAddresses>| Message::Peers(Peers { share, peers }).to_frame().unwrap();
    let lists_receiver = raw(vec![PeerAddresses {
        device: DeviceId::from_bytes([1; 32]),
        addresses: vec!["192.0.2.1:1".parse().unwrap()],
    }]);
    let multicast = raw(vec![PeerAddresses {
        device: DeviceId::from_bytes([7; 32]),
        addresses: vec!["239.1.2.3:1".parse().unwrap()],
    }]);
    write_seeds(
        "control_stream",
        &[
            ("pex-peers", with_scenario(3, &peers)),
            ("pex-peers-read-only-peer", with_scenario(2, &peers)),
            ("hostile-pex-folder-not-open", with_scenario(1, &peers)),
            (
                "hostile-pex-lists-receiver",
                with_scenario(3, &lists_receiver),
            ),
            ("hostile-pex-multicast", with_scenario(3, &multicast)),
        ],
    );
    write_seeds(
        "message",
        &[
            ("peers", peers[4..].to_vec()),
            ("peers-huge-count", {
                let mut p = vec![8];
                p.extend_from_slice(share.as_bytes());
                p.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
                p
            }),
        ],
    );
}
