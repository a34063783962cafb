//! The device side of a tracker connection: [`connect`] from a device's own
//! [`Transport`], then [`TrackerSender`] / [`TrackerReceiver`] for the
//! control stream and [`open_relay`] for relay streams.
//!
//! Everything received is checked by the strict decoder
//! ([`decode_server`]); a tracker that sends garbage gets its connection
//! closed ([`ClientError`]), and nothing it says is trusted beyond being a
//! hint of where to dial.

use std::net::SocketAddr;

use meshsync_core::ids::DeviceId;
use meshsync_net::{NetError, TRACKER_ALPN, Transport};
use meshsync_proto::frame::{FrameDecoder, FrameError};
use meshsync_proto::tracker::{
    ClientMessage, MAX_MESSAGE_LEN, RelayToken, ServerMessage, TrackerCodecError, decode_server,
    encode_client,
};
use quinn::{RecvStream, SendStream, VarInt};

use crate::server::CLOSE_BAD_MESSAGE;

/// Why talking to a tracker failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting failed (unreachable, handshake refused).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The connection failed or was closed.
    #[error("tracker connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing failed.
    #[error("writing to the tracker: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading failed.
    #[error("reading from the tracker: {0}")]
    Read(#[from] quinn::ReadError),
    /// The tracker sent something that is not a valid message.
    #[error("the tracker sent a bad message: {0}")]
    Codec(#[from] TrackerCodecError),
    /// The tracker's framing broke.
    #[error("the tracker's framing broke: {0}")]
    Frame(#[from] FrameError),
    /// The tracker closed the control stream.
    #[error("the tracker closed the stream")]
    Closed,
}

/// Sends requests on the control stream.
pub struct TrackerSender {
    send: SendStream,
}

/// Receives the tracker's messages from the control stream.
pub struct TrackerReceiver {
    connection: quinn::Connection,
    recv: RecvStream,
    decoder: FrameDecoder,
}

/// An open tracker connection.
pub struct TrackerConnection {
    /// The QUIC connection (for [`open_relay`] and its state).
    pub connection: quinn::Connection,
    /// The tracker's key id.
    pub tracker: DeviceId,
    /// Requests.
    pub sender: TrackerSender,
    /// Answers and pushed messages.
    pub receiver: TrackerReceiver,
}

/// Connects to the tracker at `addr` from `transport`'s socket and opens the
/// control stream. The stream becomes visible to the tracker with the first
/// message sent.
pub async fn connect(
    transport: &Transport,
    addr: SocketAddr,
) -> Result<TrackerConnection, ClientError> {
    let service = transport.connect_service(addr, TRACKER_ALPN, None).await?;
    let (send, recv) = service.connection.open_bi().await?;
    Ok(TrackerConnection {
        connection: service.connection.clone(),
        tracker: service.peer,
        sender: TrackerSender { send },
        receiver: TrackerReceiver {
            connection: service.connection,
            recv,
            decoder: FrameDecoder::new(MAX_MESSAGE_LEN),
        },
    })
}

impl TrackerSender {
    /// Sends one request.
    pub async fn send(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let frame = encode_client(message)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }
}

impl TrackerReceiver {
    /// The next message. Cancel-safe. A message that does not decode closes
    /// the connection.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(payload)) => {
                    return decode_server(&payload).map_err(|e| self.bad(e.into()));
                }
                Ok(None) => {}
                Err(e) => return Err(self.bad(e.into())),
            }
            match self.recv.read_chunk(MAX_MESSAGE_LEN as usize, true).await? {
                Some(chunk) => self
                    .decoder
                    .push(&chunk.bytes)
                    .map_err(|e| self.bad(e.into()))?,
                None => return Err(ClientError::Closed),
            }
        }
    }

    fn bad(&self, error: ClientError) -> ClientError {
        self.connection
            .close(VarInt::from_u32(CLOSE_BAD_MESSAGE), b"bad message");
        error
    }
}

/// Opens a relay stream for `token`: after this, write datagrams with
/// [`meshsync_proto::tracker::encode_datagram`] and read them with a
/// [`meshsync_proto::tracker::DatagramDecoder`].
pub async fn open_relay(
    connection: &quinn::Connection,
    token: RelayToken,
) -> Result<(SendStream, RecvStream), ClientError> {
    let (mut send, recv) = connection.open_bi().await?;
    send.write_all(&encode_client(&ClientMessage::RelayJoin { token })?)
        .await?;
    Ok((send, recv))
}
