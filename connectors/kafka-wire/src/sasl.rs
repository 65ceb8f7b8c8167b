//! The client side of the SASL mechanisms the raw client speaks: the
//! messages that SaslAuthenticate requests carry, one exchange per
//! connection.
//!
//! Owns PLAIN (RFC 4616: one message, `\0user\0password`) and SCRAM-SHA-256
//! / SCRAM-SHA-512 (RFC 5802, RFC 7677): the client-first message with a
//! fresh nonce, the client-final message with the proof, and the check of
//! the server's signature, so that a broker that does not know the
//! password is not trusted. Does not own the requests that carry the
//! messages ([`crate::connection`]) or where the credentials come from
//! ([`crate::security`]).
//!
//! Written by hand, and why: the SCRAM message syntax (a handful of
//! `key=value` attributes separated by commas, the username escaping
//! `=`→`=3D`, `,`→`=2C`) is smaller than any crate that would wrap it, and
//! the maintained SCRAM crates either bring their own I/O model or are
//! unmaintained. The cryptography is not hand-written: HMAC (`hmac`),
//! SHA-256/512 (`sha2`), PBKDF2 (`pbkdf2`), base64 (`base64`) and the nonce
//! (`getrandom`) are RustCrypto and maintained crates. Like librdkafka and
//! the Java client, the password goes in as its UTF-8 bytes (no SASLprep).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::security::{Sasl, SaslMechanism};

/// The most PBKDF2 iterations a broker may ask for: far above Kafka's
/// 4096..=16384, low enough that a hostile broker cannot stall the client.
const MAX_ITERATIONS: u32 = 1 << 20;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScramHash {
    /// SCRAM-SHA-256.
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// HMAC(`key`, `data`).
    pub(crate) fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes keys of any length");
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha256 => run::<Hmac<Sha256>>(key, data),
            Self::Sha512 => run::<Hmac<Sha512>>(key, data),
        }
    }

    /// H(`data`).
    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// Hi(`password`, `salt`, `iterations`): PBKDF2 with this hash's HMAC.
    pub(crate) fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Self::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password, salt, iterations).to_vec()
            }
            Self::Sha512 => {
                pbkdf2::pbkdf2_hmac_array::<Sha512, 64>(password, salt, iterations).to_vec()
            }
        }
    }
}

/// `name` with SCRAM's escaping: `=` as `=3D`, `,` as `=2C`.
pub(crate) fn escape_username(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

/// The attribute `key` (a single letter) of a SCRAM message.
pub(crate) fn attribute(message: &str, key: char) -> Option<&str> {
    message.split(',').find_map(|part| {
        part.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// Where an exchange is.
#[derive(Debug)]
enum Step {
    /// PLAIN, before its one message.
    PlainStart,
    /// SCRAM, before the client-first message.
    ScramStart,
    /// SCRAM, waiting for the server-first message.
    ScramFirstSent,
    /// SCRAM, waiting for the server-final message with this signature.
    ScramFinalSent { server_signature: Vec<u8> },
    /// PLAIN, waiting for the (empty) answer to its message.
    PlainSent,
    /// Over.
    Done,
}

/// One SASL exchange: asked for the next client message with each server
/// message, until it says the exchange is complete.
#[derive(Debug)]
pub(crate) struct Exchange {
    step: Step,
    hash: ScramHash,
    username: String,
    password: String,
    nonce: String,
}

/// A new exchange for `sasl`, with a fresh random nonce for SCRAM.
pub(crate) fn exchange(sasl: &Sasl) -> Result<Exchange, String> {
    let mut random = [0u8; 24];
    getrandom::fill(&mut random)
        .map_err(|e| format!("no random bytes for the SCRAM nonce: {e}"))?;
    Ok(Exchange::with_nonce(sasl, BASE64.encode(random)))
}

impl Exchange {
    /// An exchange for `sasl` with the given client nonce (tests use the
    /// RFC's).
    pub(crate) fn with_nonce(sasl: &Sasl, nonce: String) -> Self {
        let (step, hash) = match sasl.mechanism {
            SaslMechanism::Plain => (Step::PlainStart, ScramHash::Sha256),
            SaslMechanism::ScramSha256 => (Step::ScramStart, ScramHash::Sha256),
            SaslMechanism::ScramSha512 => (Step::ScramStart, ScramHash::Sha512),
        };
        Self {
            step,
            hash,
            username: sasl.username.clone(),
            password: sasl.password.clone(),
            nonce,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", escape_username(&self.username), self.nonce)
    }

    /// The next message to send, given the last one the server sent (empty
    /// before the first): `None` once the exchange is complete and the
    /// server proved it knows the password.
    ///
    /// # Errors
    ///
    /// Why the server's message is not acceptable.
    pub(crate) fn next(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::PlainStart => {
                self.step = Step::PlainSent;
                Ok(Some(
                    format!("\0{}\0{}", self.username, self.password).into_bytes(),
                ))
            }
            Step::PlainSent => Ok(None),
            Step::ScramStart => {
                self.step = Step::ScramFirstSent;
                Ok(Some(
                    format!("n,,{}", self.client_first_bare()).into_bytes(),
                ))
            }
            Step::ScramFirstSent => {
                let server_first = std::str::from_utf8(server)
                    .map_err(|_| "the server-first SCRAM message is not UTF-8".to_owned())?;
                let (client_final, server_signature) = self.client_final(server_first)?;
                self.step = Step::ScramFinalSent { server_signature };
                Ok(Some(client_final.into_bytes()))
            }
            Step::ScramFinalSent { server_signature } => {
                let server_final = String::from_utf8_lossy(server);
                if let Some(error) = attribute(&server_final, 'e') {
                    return Err(format!(
                        "the broker ended the SCRAM exchange with error '{error}'"
                    ));
                }
                let signature = attribute(&server_final, 'v')
                    .and_then(|v| BASE64.decode(v).ok())
                    .ok_or_else(|| {
                        format!("the server-final SCRAM message '{server_final}' has no valid v= signature")
                    })?;
                if signature != server_signature {
                    return Err(
                        "the broker's SCRAM server signature is wrong: it does not know the \
                         user's credentials, so it is not the broker it claims to be"
                            .to_owned(),
                    );
                }
                Ok(None)
            }
            Step::Done => Err("the broker continued a SASL exchange that was complete".to_owned()),
        }
    }

    /// The client-final message answering `server_first`, and the server
    /// signature the server-final message must carry.
    fn client_final(&self, server_first: &str) -> Result<(String, Vec<u8>), String> {
        let malformed =
            |what: &str| format!("the server-first SCRAM message '{server_first}' {what}");
        if server_first.starts_with("m=") {
            return Err(malformed("asks for an extension this client does not know"));
        }
        let nonce = attribute(server_first, 'r').ok_or_else(|| malformed("has no nonce"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(malformed("does not extend the client's nonce"));
        }
        let salt = attribute(server_first, 's')
            .and_then(|s| BASE64.decode(s).ok())
            .ok_or_else(|| malformed("has no valid base64 salt"))?;
        let iterations = attribute(server_first, 'i')
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| (1..=MAX_ITERATIONS).contains(i))
            .ok_or_else(|| malformed(&format!("has no iteration count in 1..={MAX_ITERATIONS}")))?;
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let salted = self
            .hash
            .salted_password(self.password.as_bytes(), &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        let stored_key = self.hash.digest(&client_key);
        let client_signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = self.hash.hmac(&salted, b"Server Key");
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            server_signature,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scram(mechanism: SaslMechanism, username: &str, password: &str, nonce: &str) -> Exchange {
        Exchange::with_nonce(
            &Sasl {
                mechanism,
                username: username.to_owned(),
                password: password.to_owned(),
            },
            nonce.to_owned(),
        )
    }

    /// RFC 7677, section 3.
    #[test]
    fn scram_sha_256_matches_the_rfc_7677_test_vector() {
        let mut exchange = scram(
            SaslMechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        let first = exchange.next(b"").unwrap().unwrap();
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                             s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = exchange.next(server_first).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(last).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let done = exchange
            .next(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert_eq!(done, None);
        assert!(exchange.next(b"").is_err(), "nothing after the end");
    }

    #[test]
    fn a_wrong_server_signature_is_refused() {
        let mut exchange = scram(
            SaslMechanism::ScramSha256,
            "user",
            "pencil",
            "rOprNGfwEbeRWgbNEkqO",
        );
        exchange.next(b"").unwrap();
        exchange
            .next(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        let error = exchange
            .next(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap_err();
        assert!(error.contains("server signature is wrong"), "{error}");
    }

    #[test]
    fn server_first_messages_that_break_the_rules_are_refused() {
        for (server_first, expected) in [
            (
                "r=othernonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "does not extend",
            ),
            ("r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
            ("r=abcdef,s=not base64!,i=4096", "salt"),
            ("r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", "iteration"),
            (
                "r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=999999999",
                "iteration",
            ),
            (
                "m=ext,r=abcdef,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
                "extension",
            ),
        ] {
            let mut exchange = scram(SaslMechanism::ScramSha512, "u", "p", "abc");
            exchange.next(b"").unwrap();
            let error = exchange.next(server_first.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{server_first}: {error}");
        }
    }

    #[test]
    fn usernames_are_escaped_and_plain_sends_one_message() {
        let mut exchange = scram(SaslMechanism::ScramSha512, "a=b,c", "p", "n0nce");
        assert_eq!(
            exchange.next(b"").unwrap().unwrap(),
            b"n,,n=a=3Db=2Cc,r=n0nce"
        );
        let mut plain = scram(SaslMechanism::Plain, "alice", "secret", "unused");
        assert_eq!(plain.next(b"").unwrap().unwrap(), b"\0alice\0secret");
        assert_eq!(plain.next(b"").unwrap(), None);
    }
}
