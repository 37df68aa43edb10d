//! Arbitrary stored outbox entries (destination key and frame bytes) through `OutboxItem::from_stored`: never a panic, and an accepted entry keeps its bytes and names the frame they hold.
#![no_main]

use ifrelay::relay::destination::{Destination, OutboxItem};
use ifrelay_proto::frame::LENGTH_PREFIX;
use ifrelay_proto::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: length of the destination key; then the key; then the
    // stored frame bytes.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, bytes) = rest.split_at(usize::from(n).min(rest.len()));
    let key = String::from_utf8_lossy(key);
    match OutboxItem::from_stored(7, &key, bytes.to_vec()) {
        Ok(item) => {
            assert_eq!(item.seq, 7);
            assert_eq!(item.bytes, bytes);
            assert_eq!(
                Destination::parse(&item.destination.key()),
                Ok(item.destination.clone())
            );
            let frame =
                Frame::decode_body(&bytes[LENGTH_PREFIX..]).expect("decoded once, decodes again");
            assert_eq!(item.meta.message_id, frame.header.id);
            assert_eq!(item.meta.message_type, frame.body.message_type());
            assert_eq!(item.meta.serial.as_ref(), frame.body.serial());
            assert_eq!(item.meta.prefix.as_ref(), frame.body.prefix());
        }
        Err(text) => {
            // The key was written by the box itself and is quoted as is;
            // anything else in the text comes from decoding the frame,
            // which must never repeat a My Number.
            assert!(
                !ifrelay_fuzz::contains_my_number(&text)
                    || ifrelay_fuzz::contains_my_number(&format!("{key:?}")),
                "error text holds a My Number: {text:?}"
            );
        }
    }
});
