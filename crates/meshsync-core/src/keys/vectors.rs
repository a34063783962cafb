//! The test vectors of `docs/keys.md`, checked byte for byte. They were
//! cross-checked against an independent implementation (Python: `cryptography`
//! for HKDF and Ed25519, libsodium for XChaCha20-Poly1305, the `blake3`
//! package, argon2-cffi); a change here is a change of the on-wire format.

use super::*;
use crate::ids::Hash;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The secret of every vector: bytes 0x00, 0x01, …, 0x1f.
fn vector_key() -> ReadWriteKey {
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
    ReadWriteKey::from_secret(&secret)
}

const READ_WRITE: &str = "WAAAQEAYEAUDAOCAJBIFQYDIOB4IBCEQTCQKRMFYYDENBWHA5DYPQP";
const READ_ONLY: &str = "R6PUZEL7XQIJMWFLLHAB23SMXD4EMBXHQLNWA2KENJBER55LWNEMS5TYSNHNKSG5HKFWKEWEASEPNNGR64VDJO5HMXSOBPX4OGZ7P75QM";
const ENCRYPTED: &str = "E6PUZEL7XQIJMWFLLHAB23SMXD4EMBXHQLNWA2KENJBER55LWNEMQM";

#[test]
fn derived_keys() {
    let key = vector_key();
    assert_eq!(
        hex(key.signing_key().as_bytes()),
        "cdca71e342cc930156e71ff55f6cb371151f77367e97ac1bf0b1fb2b58e1dc01"
    );
    assert_eq!(
        hex(key.verify_key().as_bytes()),
        "f3e9922ff78212cb156b3803adc9971f08c0dcf05b6c0d288d48491ef5766919"
    );
    assert_eq!(
        hex(key.data_key().as_bytes()),
        "2ecf1269daa91ba7516ca25880911ed69a3ee5469774ecbc9c17df8e367efff6"
    );
    assert_eq!(
        hex(key.access_key().as_bytes()),
        "9106b124c95420388f0d3b38c3dccf4caae87acc6b2e775eccd71b5c971c3145"
    );
    assert_eq!(
        hex(key.share_id().as_bytes()),
        "12a1446ced88cee183dd61e6e56a9503745c561bc2ccf73a63307ff1d1f91940"
    );
    assert_eq!(
        key.share_id().to_string(),
        "CKQUI3HNRDHODA65MHTOK2UVAN2FYVQ3YLGPOOTDGB77DUPZDFAA"
    );
}

#[test]
fn key_strings() {
    let key = vector_key();
    assert_eq!(*key.to_key_string(), READ_WRITE);
    assert_eq!(*key.read_only().to_key_string(), READ_ONLY);
    assert_eq!(*key.encrypted().to_key_string(), ENCRYPTED);
    for text in [READ_WRITE, READ_ONLY, ENCRYPTED] {
        let parsed: FolderKey = text.parse().unwrap();
        assert_eq!(*parsed.to_key_string(), text);
        assert_eq!(parsed.share_id(), key.share_id());
    }
}

#[test]
fn batch_signature() {
    let key = vector_key();
    let signature = sign_batch(&key, 1, b"hello");
    assert_eq!(
        hex(&signature.to_bytes()),
        "7a4dcc3eab33b16017715c475391bd920d8d3101b7cd635dcb2a544f23f429bc\
         bb1768c2a0e49ef2654dc761bb1b1f33a4a8df9657cb12f363673c8e0940df06"
    );
}

#[test]
fn access_proofs() {
    let key = vector_key();
    let binding = [0xaa; 32];
    let initiator = key
        .access_key()
        .prove(ProofRole::Initiator, &binding)
        .unwrap();
    let responder = key
        .access_key()
        .prove(ProofRole::Responder, &binding)
        .unwrap();
    assert_eq!(
        hex(&initiator.to_bytes()),
        "3d8cbba28eeff38f020505bd3751e782eb984f4a17aef3254ca3631abe318e86"
    );
    assert_eq!(
        hex(&responder.to_bytes()),
        "193bb3e967497d7fa9336a4e7bb2e7baec22f120b6b5e7b3d2a891bce6a1ca5a"
    );
}

#[test]
fn read_proofs() {
    let data = vector_key().data_key().clone();
    let binding = [0xaa; 32];
    let initiator = data.prove_read(ProofRole::Initiator, &binding).unwrap();
    let responder = data.prove_read(ProofRole::Responder, &binding).unwrap();
    assert_eq!(
        hex(&initiator.to_bytes()),
        "6a18ad606ba0a479817d559da30f90d1dab6f0ed9dab31190fb3f606c7b57cdb"
    );
    assert_eq!(
        hex(&responder.to_bytes()),
        "9f7982ce39ea40f5f131b290f1bf8b26f876211e499c2d0b34dcac695ee43b2f"
    );
    // The vector protocol.md carried before the read proof moved here.
    let other = DataKey::from_bytes(&[0x11; 32]);
    assert_eq!(
        hex(&other
            .prove_read(ProofRole::Initiator, &binding)
            .unwrap()
            .to_bytes()),
        "118f395974c5b12f2db8b919b711c88b66edf0efea16fc00a98a1b674729fddc"
    );
}

#[test]
fn discovery_names() {
    let access = vector_key().access_key().clone();
    assert_eq!(
        hex(&discovery::tracker_lookup_key(&access)),
        "08d4f5ed519cbf16df5fed5d691fa07258eecc0f814edfe3d76eda57eb73c99d"
    );
    assert_eq!(
        hex(&discovery::dht_info_hash(&access, 20_000)),
        "c5326bf87188fb2324bb453cc52a5f9bffc11d34"
    );
    let device = crate::ids::DeviceId::from_bytes([0x22; 32]);
    assert_eq!(
        hex(&discovery::LanTagKey::new(&access).tag(&device, 5_000_000, &[1, 2, 3])),
        "386ed435ea089e772253a1c73c09e004"
    );
}

#[test]
fn encrypted_name() {
    assert_eq!(
        vector_key().data_key().encrypt_name("hello.txt").unwrap(),
        "sbjkhr7siyufkidam2hz2j4pxqueonsxyikvyae3mysq2izjlexaekeskfxrpc3xrdogjeqkexcsj7a"
    );
}

#[test]
fn encrypted_chunk() {
    let chunk = vector_key()
        .data_key()
        .encrypt_chunk(b"meshsync test chunk");
    assert_eq!(
        chunk.plain_hash.to_hex(),
        "c55d75197c76295e26f57cc7e770ebfbfc3a5e2d1e4f295848cdb58432da123f"
    );
    assert_eq!(
        hex(&chunk.ciphertext),
        "1dddec8024ba3020c1f461b57af3b572d5a25c3835945a88d2d94b7b2d22be009975b1"
    );
    assert_eq!(
        chunk.cipher_hash,
        Hash(
            *blake3::Hash::from_hex(
                "928002168271793b96ca7e5da5f1087a693fa1cd87cafdf2deefe6aca55cc3e0"
            )
            .unwrap()
            .as_bytes()
        )
    );
}

#[test]
fn session_secrets() {
    assert_eq!(
        hex(SessionSecret::from_key_file_bytes(&[0x42; 32])
            .unwrap()
            .as_bytes()),
        "360f417f468062c003c4812fd08a5391653b120eab5039a6a006605c6d12738a"
    );
    let from_password =
        SessionSecret::from_password("correct horse battery staple", b"meshsync-salt-01").unwrap();
    assert_eq!(
        hex(from_password.as_bytes()),
        "8879cdf81cd62830388eb505ff94c99c4b256c64d6a196356662e344c325d629"
    );
}

/// Intermediate values of docs/keys.md, for implementers debugging step by
/// step; they pin every label and context string.
#[test]
fn intermediate_values() {
    let key = vector_key();
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8);
    let (prk, _) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(super::folder::HKDF_SALT), &secret);
    assert_eq!(
        hex(&prk),
        "90a93dea6e25c49ee09f2db2cbea783010b895cdf571cd7822b4d9f3118e868e"
    );
    assert_eq!(
        hex(&super::signing::batch_message(&key.share_id(), 1, b"hello")),
        "6d65736873796e6320763120696e6465782062617463680012a1446ced88cee1\
         83dd61e6e56a9503745c561bc2ccf73a63307ff1d1f919400000000000000001\
         ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    );
    let data = key.data_key().as_bytes();
    let name_nonce_key = blake3::derive_key(super::crypt::NAME_NONCE_CONTEXT, data);
    assert_eq!(
        hex(&name_nonce_key),
        "d0b07c5919f7b016d16c0c1e9162aeaa70417790914db9cc732d07b657bdca50"
    );
    assert_eq!(
        hex(&blake3::derive_key(super::crypt::NAME_CIPHER_CONTEXT, data)),
        "eb46592eb84b3bae7338f43da176890ca801375a175cb7b4902072c0e296e445"
    );
    assert_eq!(
        hex(&blake3::keyed_hash(&name_nonce_key, b"hello.txt").as_bytes()[..24]),
        "9052a3c7f24628552060668f9d278fbc28473657c2155c00"
    );
    let chunk_key = blake3::derive_key(super::crypt::CHUNK_CONTEXT, data);
    assert_eq!(
        hex(&chunk_key),
        "7599dc012eefb8883f00d61a5c3b3d57dc499a48ae9b95d45459e5d83f819fd3"
    );
    let mut okm = [0u8; 56];
    blake3::Hasher::new_keyed(&chunk_key)
        .update(blake3::hash(b"meshsync test chunk").as_bytes())
        .finalize_xof()
        .fill(&mut okm);
    assert_eq!(
        hex(&okm[..32]),
        "855e146c7bae07932dbb283c209bfed82373dfd6eb46a246edc025e6d6aa75fa"
    );
    assert_eq!(
        hex(&okm[32..]),
        "7df3195a1ad57cf24f7172137baa6a462cf5173619ab3963"
    );
    assert_eq!(
        hex(&blake3::derive_key(
            super::proof::READ_PROOF_KEY_CONTEXT,
            key.data_key().as_bytes()
        )),
        "f6143c3387ab83c70e2bd29636551ceca7e5c54de90f314b623eabaad1bd79ea"
    );
    assert_eq!(
        hex(&blake3::derive_key(
            discovery::LAN_TAG_CONTEXT,
            key.access_key().as_bytes()
        )),
        "9ab476f3938109236758b1e92963182638b2afc929235ee20ed5bd83702649e9"
    );
    assert_eq!(super::signing::BATCH_LABEL.len(), 24);
    assert_eq!(super::proof::PROOF_LABEL, b"meshsync v1 access proof\0");
    assert_eq!(super::proof::READ_PROOF_LABEL, b"meshsync v1 read proof\0");
    assert_eq!(
        super::proof::READ_PROOF_KEY_CONTEXT,
        "meshsync v1 folder read proof key"
    );
    assert_eq!(
        discovery::TRACKER_LOOKUP_CONTEXT,
        "meshsync v1 tracker lookup key"
    );
    assert_eq!(
        discovery::DHT_INFO_HASH_CONTEXT,
        "meshsync v1 dht info-hash"
    );
    assert_eq!(
        discovery::LAN_TAG_CONTEXT,
        "meshsync v1 lan announcement tag key"
    );
    assert_eq!(super::crypt::NAME_AAD, b"meshsync v1 name");
    assert_eq!(super::crypt::CHUNK_AAD, b"meshsync v1 chunk");
    assert_eq!(
        super::password::KEY_FILE_CONTEXT,
        "meshsync v1 session key file"
    );
}
