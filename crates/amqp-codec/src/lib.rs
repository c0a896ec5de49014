//! FerryMQ's AMQP 0-9-1 codec, server side: bytes in, typed frames out, and back.
//!
//! Pure: no sockets, no async runtime, no broker types. The connection state machine
//! (`ferrymq-amqp`) owns the buffers and calls [`decode_frame`] / [`encode_frame`] /
//! [`encode_content`].
//!
//! Layers, bottom up (one file each):
//! - `wire`: bounds-checked reader and writer of octets, integers, packed bits and strings.
//! - `value`: field tables and values ([`FieldTable`], [`AmqpValue`]) with RabbitMQ's types.
//! - `method`: [`Method`], one variant per AMQP 0-9-1 method (with RabbitMQ's extensions),
//!   generated from a single table, and [`decode_method`] / [`encode_method`].
//! - `properties`: [`BasicProperties`], the content header's property list.
//! - `frame`: [`Frame`], [`decode_frame`], [`encode_frame`], [`encode_content`].
//! - `error`: [`CodecError`] and the reply code for each.
//!
//! Architecture invariants:
//! - Decoding never panics, whatever the input; "need more bytes" (`Ok(None)`) is kept apart
//!   from "malformed" (`Err`).
//! - Every length read from the wire is checked against the bytes present (and the frame size
//!   against frame_max, on the 7-byte frame header) before anything is sliced or allocated.
//!   Field tables nest at most [`FIELD_NESTING_DEPTH_MAX`] levels.
//! - Encoding never fails: a shortstr longer than 255 bytes is truncated at a char boundary
//!   ([`truncate_shortstr`]) rather than written with a wrong length.

mod error;
mod frame;
mod method;
mod properties;
mod value;
mod wire;

pub use error::{CodecError, REPLY_COMMAND_INVALID, REPLY_FRAME_ERROR, REPLY_SYNTAX_ERROR};
pub use frame::{
    decode_frame, encode_content, encode_frame, frame_max_effective, Frame, FRAME_BODY, FRAME_END,
    FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE, FRAME_OVERHEAD, PROTOCOL_HEADER,
};
pub use method::*;
pub use properties::BasicProperties;
pub use value::{AmqpValue, FieldTable, FIELD_NESTING_DEPTH_MAX};
pub use wire::{truncate_shortstr, SHORTSTR_LEN_MAX};
