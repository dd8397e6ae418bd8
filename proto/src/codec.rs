//! The protobuf codec of every generated client and server: prost's, with small initial
//! buffers.
//!
//! tonic gives each call an 8 KiB encode buffer and an 8 KiB decode buffer, kept for as long
//! as the call lives. An agent's session is one call that lives for days, and the coordinator
//! holds one per connected host: at 10,000 hosts those two buffers alone were 160 MB, for a
//! stream whose messages (heartbeats, acknowledgements, action requests) are tens to hundreds
//! of bytes. Both buffers still grow to fit a larger message (facts, captured output, a page of
//! hosts), up to the message size limits set on each service.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial size of a call's encode and decode buffers.
pub const CALL_BUFFER_BYTES: usize = 1024;

/// tonic's default: how much one call encodes before it yields to the runtime.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// prost's codec with [`CALL_BUFFER_BYTES`] buffers; named by `build.rs` as the codec of
/// every generated method.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec {
            _messages: PhantomData,
        }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
