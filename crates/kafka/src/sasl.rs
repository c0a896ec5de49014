//! Server-side SASL mechanisms for Kafka's SaslHandshake/SaslAuthenticate: PLAIN (RFC 4616) and SCRAM-SHA-256 (RFC 5802, RFC 7677), pure (no I/O).
//!
//! The connection layer picks a [`Mechanism`] from the SaslHandshake request,
//! then feeds each SaslAuthenticate `auth_bytes` into [`parse_plain`] or a
//! [`ScramServer`] and maps a [`SaslError`] onto the response with
//! [`SaslError::response_error`].
//!
//! Passwords are used as their UTF-8 bytes without SASLprep, as Apache Kafka's
//! `ScramFormatter` does, so credentials made by Kafka tools and clients agree.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kafka_protocol::ResponseError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Largest SASL message (one SaslAuthenticate `auth_bytes`) either mechanism accepts.
pub const SASL_MESSAGE_MAX_BYTES: usize = 4096;
/// Kafka's minimum iteration count for SCRAM-SHA-256 (`ScramMechanism.minIterations`).
pub const SCRAM_ITERATIONS_MIN: u32 = 4096;
/// Kafka's maximum iteration count for SCRAM (`ScramMechanism.maxIterations`).
pub const SCRAM_ITERATIONS_MAX: u32 = 16384;
/// Iteration count FerryMQ uses when it derives a credential itself.
pub const SCRAM_ITERATIONS_DEFAULT: u32 = 4096;
/// Random bytes in the server's half of the SCRAM nonce (base64-encoded on the wire).
pub const SCRAM_SERVER_NONCE_BYTES: usize = 24;
/// Salt length used for FerryMQ-made credentials and for unknown users' fake ones.
pub const SCRAM_SALT_BYTES: usize = 16;
/// Length of a SHA-256 output: StoredKey, ServerKey, proofs and signatures.
const KEY_BYTES: usize = 32;

/// Mechanism names offered in the SaslHandshake response, in preference order.
pub const ENABLED_MECHANISMS: &[&str] = &["SCRAM-SHA-256", "PLAIN"];

/// Why a SASL exchange failed. Every variant is a refusal, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The message is longer than [`SASL_MESSAGE_MAX_BYTES`].
    #[error("SASL message of {0} bytes exceeds the limit of {SASL_MESSAGE_MAX_BYTES}")]
    TooLong(usize),
    /// The message does not follow the mechanism's grammar.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// A field is not valid UTF-8.
    #[error("SASL message field is not valid UTF-8")]
    InvalidUtf8,
    /// The authorization identity differs from the authenticated user.
    #[error("authorization identity must be empty or equal the username")]
    AuthzidMismatch,
    /// The client asked for channel binding (`p=`), which FerryMQ does not offer.
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingUnsupported,
    /// A SCRAM extension the server does not support (`m=`, `tokenauth=true`).
    #[error("unsupported SCRAM extension: {0}")]
    UnsupportedExtension(&'static str),
    /// The nonce in client-final differs from the one the server sent.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The channel-binding attribute in client-final does not repeat the gs2 header.
    #[error("SCRAM channel-binding attribute does not match the gs2 header")]
    ChannelBindingMismatch,
    /// Wrong password, or unknown user: the two are deliberately not told apart.
    #[error("authentication failed: invalid credentials")]
    AuthenticationFailed,
    /// A credential's iteration count is outside Kafka's bounds.
    #[error("SCRAM iteration count {0} outside {SCRAM_ITERATIONS_MIN}..={SCRAM_ITERATIONS_MAX}")]
    InvalidIterations(u32),
    /// A message arrived in the wrong step, or after the exchange ended.
    #[error("SASL message not valid in the current state")]
    IllegalState,
    /// The operating system's random source failed.
    #[error("random source failed")]
    Random,
}

impl SaslError {
    /// The Kafka error code to put in the SaslAuthenticate response.
    pub fn response_error(&self) -> ResponseError {
        match self {
            SaslError::IllegalState => ResponseError::IllegalSaslState,
            SaslError::Random => ResponseError::UnknownServerError,
            _ => ResponseError::SaslAuthenticationFailed,
        }
    }
}

/// A SASL mechanism FerryMQ's Kafka listener implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616 PLAIN (clear-text password; use over TLS).
    Plain,
    /// RFC 7677 SCRAM-SHA-256.
    ScramSha256,
}

impl Mechanism {
    /// The mechanism for a SaslHandshake name; exact, case-sensitive match as in Kafka.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            _ => None,
        }
    }

    /// The mechanism's IANA name, as used in SaslHandshake.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

fn check_len(msg: &[u8]) -> Result<(), SaslError> {
    if msg.len() > SASL_MESSAGE_MAX_BYTES {
        return Err(SaslError::TooLong(msg.len()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// PLAIN
// ---------------------------------------------------------------------------

/// The three fields of a PLAIN message, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials<'a> {
    /// Authorization identity: empty, or equal to `username` (checked by [`parse_plain`]).
    pub authzid: &'a str,
    /// Authentication identity.
    pub username: &'a str,
    /// Clear-text password.
    pub password: &'a str,
}

impl PlainCredentials<'_> {
    /// Compares the password with `expected` in time independent of their contents
    /// (only the lengths may leak).
    pub fn password_matches(&self, expected: &[u8]) -> bool {
        bool::from(self.password.as_bytes().ct_eq(expected))
    }
}

/// Parses a PLAIN message `authzid NUL authcid NUL passwd` (RFC 4616).
///
/// # Errors
/// [`SaslError::TooLong`] past [`SASL_MESSAGE_MAX_BYTES`]; [`SaslError::Malformed`]
/// unless there are exactly two NULs and a non-empty username and password;
/// [`SaslError::InvalidUtf8`]; [`SaslError::AuthzidMismatch`] when the authzid is
/// neither empty nor the username (Kafka's `PlainSaslServer` rule).
pub fn parse_plain(msg: &[u8]) -> Result<PlainCredentials<'_>, SaslError> {
    check_len(msg)?;
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed(
            "PLAIN needs exactly authzid NUL authcid NUL passwd",
        ));
    };
    let utf8 = |b| std::str::from_utf8(b).map_err(|_| SaslError::InvalidUtf8);
    let (authzid, username, password) = (utf8(authzid)?, utf8(username)?, utf8(password)?);
    if username.is_empty() {
        return Err(SaslError::Malformed("PLAIN username is empty"));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("PLAIN password is empty"));
    }
    if !authzid.is_empty() && authzid != username {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(PlainCredentials {
        authzid,
        username,
        password,
    })
}

// ---------------------------------------------------------------------------
// SCRAM-SHA-256
// ---------------------------------------------------------------------------

/// What the server stores for a SCRAM-SHA-256 user (RFC 5802 §3): never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The user's salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// H(ClientKey).
    pub stored_key: [u8; KEY_BYTES],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// Derives the stored credential from a password: SaltedPassword =
    /// PBKDF2-HMAC-SHA-256(password, salt, iterations), ClientKey = HMAC(SaltedPassword,
    /// "Client Key"), StoredKey = H(ClientKey), ServerKey = HMAC(SaltedPassword, "Server Key").
    ///
    /// This is the expensive step (by design); call it when a password is set, not per login.
    ///
    /// # Errors
    /// [`SaslError::InvalidIterations`] outside Kafka's 4096..=16384.
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> Result<Self, SaslError> {
        if !(SCRAM_ITERATIONS_MIN..=SCRAM_ITERATIONS_MAX).contains(&iterations) {
            return Err(SaslError::InvalidIterations(iterations));
        }
        let mut salted = [0u8; KEY_BYTES];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Ok(ScramCredential {
            salt: salt.to_vec(),
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        })
    }

    /// [`derive`](Self::derive) with a fresh random salt and [`SCRAM_ITERATIONS_DEFAULT`].
    ///
    /// # Errors
    /// [`SaslError::Random`] if the OS random source fails.
    pub fn derive_with_random_salt(password: &[u8]) -> Result<Self, SaslError> {
        let mut salt = [0u8; SCRAM_SALT_BYTES];
        getrandom::fill(&mut salt).map_err(|_| SaslError::Random)?;
        Self::derive(password, &salt, SCRAM_ITERATIONS_DEFAULT)
    }
}

/// Where the SCRAM server finds a user's credential.
pub trait CredentialLookup {
    /// The user's SCRAM-SHA-256 credential, or `None` for an unknown user.
    fn scram_sha256(&self, user: &str) -> Option<ScramCredential>;
}

impl<T: CredentialLookup + ?Sized> CredentialLookup for &T {
    fn scram_sha256(&self, user: &str) -> Option<ScramCredential> {
        (**self).scram_sha256(user)
    }
}

impl<T: CredentialLookup + ?Sized> CredentialLookup for std::sync::Arc<T> {
    fn scram_sha256(&self, user: &str) -> Option<ScramCredential> {
        (**self).scram_sha256(user)
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_BYTES] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// A per-process random key for unknown users' fake credentials, so that their salt
/// is stable across attempts (an unknown user looks like a known one) yet unguessable.
fn fake_credential_key() -> Result<&'static [u8; KEY_BYTES], SaslError> {
    static KEY: OnceLock<[u8; KEY_BYTES]> = OnceLock::new();
    if let Some(key) = KEY.get() {
        return Ok(key);
    }
    let mut key = [0u8; KEY_BYTES];
    getrandom::fill(&mut key).map_err(|_| SaslError::Random)?;
    Ok(KEY.get_or_init(|| key))
}

/// A credential for a user that does not exist: same shape as a real one, derived with
/// HMACs (no PBKDF2: a real lookup costs no PBKDF2 either), and never matching any proof.
fn fake_credential(user: &str) -> Result<ScramCredential, SaslError> {
    let key = fake_credential_key()?;
    let salt = hmac(key, &[b"salt\0", user.as_bytes()]);
    Ok(ScramCredential {
        salt: salt[..SCRAM_SALT_BYTES].to_vec(),
        iterations: SCRAM_ITERATIONS_DEFAULT,
        stored_key: hmac(key, &[b"stored-key\0", user.as_bytes()]),
        server_key: hmac(key, &[b"server-key\0", user.as_bytes()]),
    })
}

/// Decodes an RFC 5802 `saslname`: `=2C` is `,`, `=3D` is `=`; any other `=` or a `,`
/// is an error.
pub fn decode_saslname(name: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find([',', '=']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("=2C") {
            out.push(',');
        } else if tail.starts_with("=3D") {
            out.push('=');
        } else {
            return Err(SaslError::Malformed("bad escape in saslname"));
        }
        rest = &tail[3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a name as an RFC 5802 `saslname` (the inverse of [`decode_saslname`]).
pub fn encode_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// `printable` of RFC 5802: %x21-2B / %x2D-7E (visible ASCII without ',').
fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// The state a [`ScramServer`] keeps between its two steps.
struct AwaitingFinal {
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    username: String,
    credential: ScramCredential,
    known_user: bool,
}

enum ScramState {
    Initial,
    AwaitingFinal(Box<AwaitingFinal>),
    /// Succeeded or failed; no further messages are accepted.
    Done,
}

/// The server side of one SCRAM-SHA-256 exchange.
///
/// `new` → [`handle_client_first`](Self::handle_client_first) (returns server-first) →
/// [`handle_client_final`](Self::handle_client_final) (returns server-final and the
/// authenticated username). Any error ends the exchange: later calls return
/// [`SaslError::IllegalState`].
pub struct ScramServer<L> {
    lookup: L,
    state: ScramState,
    /// Fixed server nonce for tests (RFC test vectors); `None` draws a random one.
    fixed_server_nonce: Option<String>,
}

impl<L: CredentialLookup> ScramServer<L> {
    /// A new exchange that looks credentials up in `lookup`.
    pub fn new(lookup: L) -> Self {
        ScramServer {
            lookup,
            state: ScramState::Initial,
            fixed_server_nonce: None,
        }
    }

    /// A new exchange whose server nonce part is `server_nonce` (test vectors only).
    #[cfg(test)]
    fn with_server_nonce(lookup: L, server_nonce: &str) -> Self {
        ScramServer {
            fixed_server_nonce: Some(server_nonce.to_owned()),
            ..Self::new(lookup)
        }
    }

    /// Whether the exchange has ended (successfully or not).
    pub fn is_done(&self) -> bool {
        matches!(self.state, ScramState::Done)
    }

    /// Handles client-first-message and returns server-first-message.
    ///
    /// An unknown user gets a fake salt and carries on; the exchange fails at the
    /// proof with the same error as a wrong password.
    ///
    /// # Errors
    /// Malformed input, `p=` channel binding, an authzid other than the user, the
    /// `m=` extension or `tokenauth=true`, or a call out of order.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, SaslError> {
        if !matches!(self.state, ScramState::Initial) {
            self.state = ScramState::Done;
            return Err(SaslError::IllegalState);
        }
        self.state = ScramState::Done;
        let first = parse_client_first(msg)?;
        let (credential, known_user) = match self.lookup.scram_sha256(&first.username) {
            Some(c) => (c, true),
            None => (fake_credential(&first.username)?, false),
        };
        let server_nonce = match &self.fixed_server_nonce {
            Some(n) => n.clone(),
            None => {
                let mut raw = [0u8; SCRAM_SERVER_NONCE_BYTES];
                getrandom::fill(&mut raw).map_err(|_| SaslError::Random)?;
                B64.encode(raw)
            }
        };
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let out = server_first.clone().into_bytes();
        self.state = ScramState::AwaitingFinal(Box::new(AwaitingFinal {
            gs2_header: first.gs2_header,
            client_first_bare: first.bare,
            server_first,
            nonce,
            username: first.username,
            credential,
            known_user,
        }));
        Ok(out)
    }

    /// Handles client-final-message; on success returns server-final-message
    /// (`v=ServerSignature`) and the authenticated username.
    ///
    /// # Errors
    /// [`SaslError::AuthenticationFailed`] for a wrong proof or an unknown user;
    /// malformed input; nonce or channel-binding mismatch; a call out of order.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<(Vec<u8>, String), SaslError> {
        let ScramState::AwaitingFinal(st) = std::mem::replace(&mut self.state, ScramState::Done)
        else {
            return Err(SaslError::IllegalState);
        };
        let fin = parse_client_final(msg)?;
        let cbind = B64
            .decode(fin.channel_binding)
            .map_err(|_| SaslError::Malformed("channel binding is not base64"))?;
        if cbind != st.gs2_header.as_bytes() {
            return Err(SaslError::ChannelBindingMismatch);
        }
        if fin.nonce != st.nonce {
            return Err(SaslError::NonceMismatch);
        }
        let proof = B64
            .decode(fin.proof)
            .map_err(|_| SaslError::Malformed("proof is not base64"))?;
        let proof: [u8; KEY_BYTES] = proof
            .try_into()
            .map_err(|_| SaslError::Malformed("proof has the wrong length"))?;

        let auth_message = [
            st.client_first_bare.as_bytes(),
            b",",
            st.server_first.as_bytes(),
            b",",
            fin.without_proof.as_bytes(),
        ];
        let client_signature = hmac(&st.credential.stored_key, &auth_message);
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed_stored: [u8; KEY_BYTES] = Sha256::digest(client_key).into();
        let proof_ok = computed_stored.ct_eq(&st.credential.stored_key);
        if !bool::from(proof_ok & subtle::Choice::from(u8::from(st.known_user))) {
            return Err(SaslError::AuthenticationFailed);
        }
        let server_signature = hmac(&st.credential.server_key, &auth_message);
        let server_final = format!("v={}", B64.encode(server_signature)).into_bytes();
        Ok((server_final, st.username))
    }
}

struct ClientFirst {
    gs2_header: String,
    bare: String,
    username: String,
    client_nonce: String,
}

fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, SaslError> {
    check_len(msg)?;
    let msg = std::str::from_utf8(msg).map_err(|_| SaslError::InvalidUtf8)?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = msg
        .split_once(',')
        .ok_or(SaslError::Malformed("missing gs2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(SaslError::ChannelBindingUnsupported),
        _ => return Err(SaslError::Malformed("bad gs2 channel-binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(SaslError::Malformed("missing gs2 header"))?;
    let authzid = if authzid.is_empty() {
        None
    } else {
        let name = authzid
            .strip_prefix("a=")
            .ok_or(SaslError::Malformed("bad gs2 authzid"))?;
        Some(decode_saslname(name)?)
    };
    let gs2_header = msg[..msg.len() - bare.len()].to_owned();

    // client-first-message-bare = [reserved-mext ","] username "," nonce ["," extensions]
    let mut attrs = bare.split(',');
    let user_attr = attrs.next().unwrap_or_default();
    if user_attr.starts_with("m=") {
        return Err(SaslError::UnsupportedExtension("m="));
    }
    let username = user_attr
        .strip_prefix("n=")
        .ok_or(SaslError::Malformed("missing username"))?;
    let username = decode_saslname(username)?;
    if username.is_empty() {
        return Err(SaslError::Malformed("empty username"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(SaslError::Malformed("missing nonce"))?;
    if !is_printable_nonce(client_nonce) {
        return Err(SaslError::Malformed("bad nonce"));
    }
    for ext in attrs {
        let (key, value) = ext
            .split_once('=')
            .ok_or(SaslError::Malformed("bad extension"))?;
        if key.is_empty() {
            return Err(SaslError::Malformed("bad extension"));
        }
        // Kafka's delegation-token extension: FerryMQ has no delegation tokens.
        if key == "tokenauth" && value.eq_ignore_ascii_case("true") {
            return Err(SaslError::UnsupportedExtension("tokenauth"));
        }
    }
    if let Some(authzid) = authzid {
        if authzid != username {
            return Err(SaslError::AuthzidMismatch);
        }
    }
    Ok(ClientFirst {
        gs2_header,
        bare: bare.to_owned(),
        username,
        client_nonce: client_nonce.to_owned(),
    })
}

struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    without_proof: &'a str,
}

fn parse_client_final(msg: &[u8]) -> Result<ClientFinal<'_>, SaslError> {
    check_len(msg)?;
    let msg = std::str::from_utf8(msg).map_err(|_| SaslError::InvalidUtf8)?;
    // client-final-message = channel-binding "," nonce ["," extensions] "," proof
    let (without_proof, proof) = msg
        .rsplit_once(",p=")
        .ok_or(SaslError::Malformed("missing proof"))?;
    if proof.contains(',') {
        return Err(SaslError::Malformed("proof must be the last attribute"));
    }
    let mut attrs = without_proof.split(',');
    let channel_binding = attrs
        .next()
        .and_then(|a| a.strip_prefix("c="))
        .ok_or(SaslError::Malformed("missing channel binding"))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(SaslError::Malformed("missing nonce"))?;
    for ext in attrs {
        if !ext.contains('=') {
            return Err(SaslError::Malformed("bad extension"));
        }
    }
    Ok(ClientFinal {
        channel_binding,
        nonce,
        proof,
        without_proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[derive(Default)]
    struct Users(HashMap<String, ScramCredential>);

    impl Users {
        fn with(mut self, user: &str, password: &str, salt: &[u8]) -> Self {
            let cred = ScramCredential::derive(password.as_bytes(), salt, 4096).unwrap();
            self.0.insert(user.to_owned(), cred);
            self
        }
    }

    impl CredentialLookup for Users {
        fn scram_sha256(&self, user: &str) -> Option<ScramCredential> {
            self.0.get(user).cloned()
        }
    }

    fn rfc_users() -> Users {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Users::default().with("user", "pencil", &salt)
    }

    /// A minimal SCRAM-SHA-256 client: computes client-final for a server-first.
    fn client_final(
        password: &str,
        gs2: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> String {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in server_first.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = v;
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).unwrap();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse().unwrap();
            }
        }
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={nonce}", B64.encode(gs2));
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hmac(&stored_key, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    fn login(users: &Users, user_field: &str, password: &str) -> Result<String, SaslError> {
        let bare = format!("n={user_field},r=clientnonce123");
        let mut server = ScramServer::new(users);
        let sf = server.handle_client_first(format!("n,,{bare}").as_bytes())?;
        let sf = String::from_utf8(sf).unwrap();
        let cf = client_final(password, "n,,", &bare, &sf);
        server.handle_client_final(cf.as_bytes()).map(|(_, u)| u)
    }

    #[test]
    fn rfc7677_example() {
        let users = rfc_users();
        let mut server = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        let sf = server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(String::from_utf8(sf).unwrap(), RFC_SERVER_FIRST);
        let (fin, user) = server
            .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(String::from_utf8(fin).unwrap(), RFC_SERVER_FINAL);
        assert_eq!(user, "user");
        assert!(server.is_done());
        // The test client agrees with the RFC's proof.
        assert_eq!(
            client_final(
                "pencil",
                "n,,",
                "n=user,r=rOprNGfwEbeRWgbNEkqO",
                RFC_SERVER_FIRST
            ),
            RFC_CLIENT_FINAL
        );
    }

    #[test]
    fn rfc7677_credential_derivation() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let c = ScramCredential::derive(b"pencil", &salt, 4096).unwrap();
        assert_eq!(c.iterations, 4096);
        assert_eq!(c.salt, salt);
        // Any other password derives other keys.
        let d = ScramCredential::derive(b"pencil2", &salt, 4096).unwrap();
        assert_ne!(c.stored_key, d.stored_key);
        assert_ne!(c.server_key, d.server_key);
    }

    #[test]
    fn derive_rejects_iterations_outside_kafka_bounds() {
        assert_eq!(
            ScramCredential::derive(b"p", b"s", 4095),
            Err(SaslError::InvalidIterations(4095))
        );
        assert_eq!(
            ScramCredential::derive(b"p", b"s", 16385),
            Err(SaslError::InvalidIterations(16385))
        );
        assert!(ScramCredential::derive_with_random_salt(b"p").is_ok());
    }

    #[test]
    fn random_nonce_round_trip_and_wrong_password() {
        let users = Users::default().with("alice", "secret", b"salty-salt");
        assert_eq!(login(&users, "alice", "secret").unwrap(), "alice");
        assert_eq!(
            login(&users, "alice", "Secret"),
            Err(SaslError::AuthenticationFailed)
        );
    }

    #[test]
    fn server_nonces_differ() {
        let users = rfc_users();
        let mut a = ScramServer::new(&users);
        let mut b = ScramServer::new(&users);
        let sa = a.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        let sb = b.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_ne!(sa, sb);
        assert!(sa.starts_with(b"r=rOprNGfwEbeRWgbNEkqO"));
    }

    #[test]
    fn unknown_user_gets_stable_fake_salt_and_fails_at_proof() {
        let users = rfc_users();
        let first = |u: &str| {
            let mut s = ScramServer::new(&users);
            let sf = s
                .handle_client_first(format!("n,,n={u},r=abc").as_bytes())
                .unwrap();
            let sf = String::from_utf8(sf).unwrap();
            sf.split(',').skip(1).collect::<Vec<_>>().join(",")
        };
        // Same salt and iteration count each time, like a real user; differs per user.
        assert_eq!(first("ghost"), first("ghost"));
        assert_ne!(first("ghost"), first("ghost2"));
        assert!(first("ghost").ends_with(",i=4096"));
        assert_eq!(
            login(&users, "ghost", "pencil"),
            Err(SaslError::AuthenticationFailed)
        );
    }

    #[test]
    fn nonce_mismatch() {
        let users = rfc_users();
        let mut server = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        let bad = RFC_CLIENT_FINAL.replace("k0,p=", "k1,p=");
        assert_eq!(
            server.handle_client_final(bad.as_bytes()),
            Err(SaslError::NonceMismatch)
        );
        // The exchange is over after a failure.
        assert_eq!(
            server.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(SaslError::IllegalState)
        );
    }

    #[test]
    fn channel_binding_attribute_must_repeat_gs2_header() {
        let users = rfc_users();
        let mut server = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        server
            .handle_client_first(RFC_CLIENT_FIRST.as_bytes())
            .unwrap();
        // "eSws" is base64("y,,"), but the client sent "n,,".
        let bad = RFC_CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(
            server.handle_client_final(bad.as_bytes()),
            Err(SaslError::ChannelBindingMismatch)
        );
    }

    #[test]
    fn gs2_y_flag_and_authzid_accepted() {
        let users = Users::default().with("a,b=c", "pw", b"salt");
        for gs2 in ["y,,", "n,a=a=2Cb=3Dc,"] {
            let bare = "n=a=2Cb=3Dc,r=nonce";
            let mut server = ScramServer::new(&users);
            let sf = server
                .handle_client_first(format!("{gs2}{bare}").as_bytes())
                .unwrap();
            let cf = client_final("pw", gs2, bare, std::str::from_utf8(&sf).unwrap());
            let (v, user) = server.handle_client_final(cf.as_bytes()).unwrap();
            assert_eq!(user, "a,b=c");
            assert!(v.starts_with(b"v="));
        }
    }

    #[test]
    fn client_first_refusals() {
        let users = rfc_users();
        let cases: &[(&[u8], SaslError)] = &[
            (
                b"p=tls-unique,,n=user,r=abc",
                SaslError::ChannelBindingUnsupported,
            ),
            (b"n,a=other,n=user,r=abc", SaslError::AuthzidMismatch),
            (
                b"n,,m=ext,n=user,r=abc",
                SaslError::UnsupportedExtension("m="),
            ),
            (
                b"n,,n=user,r=abc,tokenauth=true",
                SaslError::UnsupportedExtension("tokenauth"),
            ),
            (b"", SaslError::Malformed("missing gs2 header")),
            (b"n,", SaslError::Malformed("missing gs2 header")),
            (
                b"x,,n=user,r=abc",
                SaslError::Malformed("bad gs2 channel-binding flag"),
            ),
            (
                b"n,b=x,n=user,r=abc",
                SaslError::Malformed("bad gs2 authzid"),
            ),
            (b"n,,r=abc", SaslError::Malformed("missing username")),
            (b"n,,n=user", SaslError::Malformed("missing nonce")),
            (b"n,,n=user,x=abc", SaslError::Malformed("missing nonce")),
            (b"n,,n=user,r=", SaslError::Malformed("bad nonce")),
            (b"n,,n=user,r=a b", SaslError::Malformed("bad nonce")),
            (b"n,,n=,r=abc", SaslError::Malformed("empty username")),
            (
                b"n,,n=us=er,r=abc",
                SaslError::Malformed("bad escape in saslname"),
            ),
            (
                b"n,,n=user,r=abc,junk",
                SaslError::Malformed("bad extension"),
            ),
            (b"n,,n=\xff,r=abc", SaslError::InvalidUtf8),
        ];
        for (msg, err) in cases {
            let mut s = ScramServer::new(&users);
            assert_eq!(
                s.handle_client_first(msg).as_ref(),
                Err(err),
                "{}",
                String::from_utf8_lossy(msg)
            );
            assert!(s.is_done());
        }
        let long = format!("n,,n=user,r={}", "a".repeat(SASL_MESSAGE_MAX_BYTES));
        let mut s = ScramServer::new(&users);
        assert!(matches!(
            s.handle_client_first(long.as_bytes()),
            Err(SaslError::TooLong(_))
        ));
        // Unknown extensions are ignored, as in Kafka.
        let mut s = ScramServer::new(&users);
        assert!(s.handle_client_first(b"n,,n=user,r=abc,foo=bar").is_ok());
    }

    #[test]
    fn client_final_refusals() {
        let users = rfc_users();
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let nonce = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let cases: Vec<(String, SaslError)> = vec![
            (
                format!("c=biws,{nonce}"),
                SaslError::Malformed("missing proof"),
            ),
            (
                format!("{nonce},{proof}"),
                SaslError::Malformed("missing channel binding"),
            ),
            (
                format!("c=biws,{proof}"),
                SaslError::Malformed("missing nonce"),
            ),
            (
                format!("c=biws,{nonce},{proof},x=1"),
                SaslError::Malformed("proof must be the last attribute"),
            ),
            (
                format!("c=b!ws,{nonce},{proof}"),
                SaslError::Malformed("channel binding is not base64"),
            ),
            (
                format!("c=biws,{nonce},p=!!!"),
                SaslError::Malformed("proof is not base64"),
            ),
            (
                format!("c=biws,{nonce},p=AAAA"),
                SaslError::Malformed("proof has the wrong length"),
            ),
            (
                format!("c=biws,{nonce},junk,{proof}"),
                SaslError::Malformed("bad extension"),
            ),
            (
                format!("c=biws,{nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVA="),
                SaslError::AuthenticationFailed,
            ),
            (
                "c=biws,r=\u{0}\u{ff}".to_owned() + ",p=",
                SaslError::NonceMismatch,
            ),
            (
                "x".repeat(SASL_MESSAGE_MAX_BYTES + 1),
                SaslError::TooLong(SASL_MESSAGE_MAX_BYTES + 1),
            ),
        ];
        for (msg, err) in cases {
            let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
            s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            assert_eq!(s.handle_client_final(msg.as_bytes()), Err(err), "{msg}");
        }
        // Extensions between nonce and proof are allowed and covered by the proof.
        let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(
            s.handle_client_final(format!("c=biws,{nonce},x=1,{proof}").as_bytes()),
            Err(SaslError::AuthenticationFailed)
        );
        let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(
            s.handle_client_final(b"c=biws,r=x,p=\xff"),
            Err(SaslError::InvalidUtf8)
        );
    }

    #[test]
    fn messages_out_of_order_are_illegal_state() {
        let users = rfc_users();
        let mut s = ScramServer::new(&users);
        assert_eq!(
            s.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(SaslError::IllegalState)
        );
        let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        assert_eq!(
            s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()),
            Err(SaslError::IllegalState)
        );
        let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
        s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
        s.handle_client_final(RFC_CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(
            s.handle_client_final(RFC_CLIENT_FINAL.as_bytes()),
            Err(SaslError::IllegalState)
        );
        assert_eq!(
            SaslError::IllegalState.response_error(),
            ResponseError::IllegalSaslState
        );
        assert_eq!(
            SaslError::AuthenticationFailed.response_error(),
            ResponseError::SaslAuthenticationFailed
        );
    }

    #[test]
    fn saslname_escaping() {
        assert_eq!(decode_saslname("plain").unwrap(), "plain");
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(decode_saslname("=3D=2C").unwrap(), "=,");
        assert_eq!(decode_saslname("=3D2C").unwrap(), "=2C");
        assert_eq!(decode_saslname("é=2C").unwrap(), "é,");
        for bad in ["=", "a=", "=2", "=2c", "=3d", "=41", "a,b", "=é"] {
            assert!(decode_saslname(bad).is_err(), "{bad}");
        }
        for name in ["", "a,b=c", "==,,", "=2C", "é"] {
            assert_eq!(decode_saslname(&encode_saslname(name)).unwrap(), name);
        }
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
    }

    #[test]
    fn mechanism_names() {
        for name in ENABLED_MECHANISMS {
            assert_eq!(Mechanism::from_name(name).unwrap().name(), *name);
        }
        assert_eq!(Mechanism::from_name("PLAIN"), Some(Mechanism::Plain));
        assert_eq!(
            Mechanism::from_name("SCRAM-SHA-256"),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(Mechanism::from_name("plain"), None);
        assert_eq!(Mechanism::from_name("SCRAM-SHA-512"), None);
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }

    #[test]
    fn plain_good() {
        let c = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!((c.authzid, c.username, c.password), ("", "alice", "secret"));
        assert!(c.password_matches(b"secret"));
        assert!(!c.password_matches(b"secreT"));
        assert!(!c.password_matches(b"secret2"));
        let c = parse_plain(b"alice\0alice\0p\xc3\xa4ss").unwrap();
        assert_eq!((c.authzid, c.password), ("alice", "päss"));
    }

    #[test]
    fn plain_bad() {
        let cases: &[(&[u8], SaslError)] = &[
            (
                b"",
                SaslError::Malformed("PLAIN needs exactly authzid NUL authcid NUL passwd"),
            ),
            (
                b"alice\0secret",
                SaslError::Malformed("PLAIN needs exactly authzid NUL authcid NUL passwd"),
            ),
            (
                b"\0a\0b\0c",
                SaslError::Malformed("PLAIN needs exactly authzid NUL authcid NUL passwd"),
            ),
            (
                b"\0\0secret",
                SaslError::Malformed("PLAIN username is empty"),
            ),
            (
                b"\0alice\0",
                SaslError::Malformed("PLAIN password is empty"),
            ),
            (b"bob\0alice\0secret", SaslError::AuthzidMismatch),
            (b"\0al\xffice\0secret", SaslError::InvalidUtf8),
            (b"\0alice\0\xc3", SaslError::InvalidUtf8),
        ];
        for (msg, err) in cases {
            assert_eq!(parse_plain(msg).as_ref(), Err(err), "{msg:?}");
        }
        let long = [b'a'; SASL_MESSAGE_MAX_BYTES + 1];
        assert_eq!(
            parse_plain(&long),
            Err(SaslError::TooLong(SASL_MESSAGE_MAX_BYTES + 1))
        );
    }

    /// Random bytes, and random splices of valid messages, into every parser: errors
    /// are fine, panics are not.
    #[test]
    fn fuzz_parsers_never_panic() {
        let users = rfc_users();
        let mut rng = fastrand::Rng::with_seed(0x5a51_f422);
        let seeds: [&[u8]; 4] = [
            RFC_CLIENT_FIRST.as_bytes(),
            RFC_CLIENT_FINAL.as_bytes(),
            b"n,a=a=2Cb,n=a=3D,r=x,e=f",
            b"a\0b\0c",
        ];
        let alphabet = b",=nrpcsia\0\xff\xc3 23CD";
        for i in 0..20_000 {
            let msg: Vec<u8> = match i % 3 {
                0 => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
                1 => (0..rng.usize(0..64))
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect(),
                _ => {
                    let mut m = seeds[rng.usize(..seeds.len())].to_vec();
                    for _ in 0..rng.usize(1..4) {
                        if m.is_empty() {
                            break;
                        }
                        let at = rng.usize(..m.len());
                        match rng.u8(..3) {
                            0 => m[at] = alphabet[rng.usize(..alphabet.len())],
                            1 => {
                                m.remove(at);
                            }
                            _ => m.truncate(at),
                        }
                    }
                    m
                }
            };
            let _ = parse_plain(&msg);
            let _ = decode_saslname(&String::from_utf8_lossy(&msg));
            let _ = ScramServer::new(&users).handle_client_first(&msg);
            let mut s = ScramServer::with_server_nonce(&users, RFC_SERVER_NONCE);
            s.handle_client_first(RFC_CLIENT_FIRST.as_bytes()).unwrap();
            let _ = s.handle_client_final(&msg);
        }
    }
}
