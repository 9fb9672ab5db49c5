//! A virtio-blk request, parsed from a descriptor chain (virtio 1.2, section 5.2.6).
//!
//! A request is a device-readable 16-byte header (type, reserved, sector), data buffers, and
//! a device-writable status byte at the very end. Everything here comes from the guest, so
//! every rule is checked before the backend touches a byte: the direction of each buffer, the
//! header's size, where the status byte goes. A chain that breaks a rule but still has a
//! writable last byte gets `VIRTIO_BLK_S_IOERR` there.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes in a sector: virtio-blk always counts in 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header.
pub const HEADER_LEN: u32 = 16;
/// Length of a discard/write-zeroes segment.
pub const SEGMENT_LEN: u32 = 16;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// Status: done.
pub const S_OK: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status: failed.
pub const S_IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status: request type not supported.
pub const S_UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the guest's buffers.
    In,
    /// Write the guest's buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// Return the disk's serial.
    GetId,
    /// The guest no longer needs these sectors.
    Discard,
    /// Make these sectors read as zero.
    WriteZeroes,
    /// A type this device does not know.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        use virtio_bindings::virtio_blk::*;
        match t {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }

    /// Whether the data buffers are device-writable (the device fills them).
    fn device_writes_data(self) -> bool {
        matches!(self, RequestType::In | RequestType::GetId)
    }
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor.
    #[error("empty descriptor chain")]
    Empty,
    /// The first descriptor is not a device-readable header of at least 16 bytes.
    #[error("bad request header")]
    BadHeader,
    /// The header could not be read from guest memory.
    #[error("request header outside guest memory")]
    HeaderOutsideMemory,
    /// The last descriptor is not device-writable, so there is nowhere to put the status.
    #[error("no writable status byte")]
    NoStatus,
    /// A data buffer goes the wrong way for the request type.
    #[error("data buffer with the wrong direction")]
    WrongDirection,
    /// A discard or write-zeroes payload is not a whole number of segments.
    #[error("bad discard/write-zeroes payload")]
    BadSegments,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: RequestType,
    /// The first sector (In, Out).
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// Total length of the data buffers.
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Parses `descriptors` (a chain, already bounded by the queue size). On error, the
    /// status address is returned when the chain has one, so the guest can be told.
    pub fn parse(
        descriptors: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<Request, (RequestError, Option<GuestAddress>)> {
        let (first, last) = match (descriptors.first(), descriptors.last()) {
            (Some(f), Some(l)) => (f, l),
            _ => return Err((RequestError::Empty, None)),
        };
        // A last descriptor that still points on was cut short by the iterator (a loop, an
        // index past the table, or more than 4 GiB): the chain has no end, so no status byte.
        let status =
            (last.is_write_only() && !last.has_next() && last.len() >= 1 && descriptors.len() >= 2)
                .then(|| last.addr().checked_add(u64::from(last.len()) - 1))
                .flatten();
        let Some(status) = status else {
            return Err((RequestError::NoStatus, None));
        };
        let fail = |e| Err((e, Some(status)));
        if first.is_write_only() || first.len() < HEADER_LEN {
            return fail(RequestError::BadHeader);
        }
        let mut header = [0u8; HEADER_LEN as usize];
        if mem.read_slice(&mut header, first.addr()).is_err() {
            return fail(RequestError::HeaderOutsideMemory);
        }
        let kind = RequestType::from_raw(u32::from_le_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);

        // Unsupported types are answered UNSUPP whatever their buffers look like.
        let check_direction = !matches!(kind, RequestType::Unsupported(_));
        let mut data = Vec::with_capacity(descriptors.len().saturating_sub(2));
        for d in &descriptors[1..descriptors.len() - 1] {
            if check_direction && d.is_write_only() != kind.device_writes_data() {
                return fail(RequestError::WrongDirection);
            }
            data.push((d.addr(), d.len()));
        }
        // The status descriptor may carry data in front of the status byte.
        if last.len() > 1 {
            if check_direction && !kind.device_writes_data() {
                return fail(RequestError::WrongDirection);
            }
            data.push((last.addr(), last.len() - 1));
        }
        let request = Request {
            kind,
            sector,
            data,
            status,
        };
        if matches!(kind, RequestType::Discard | RequestType::WriteZeroes)
            && (request.data_len() == 0 || request.data_len() % u64::from(SEGMENT_LEN) != 0)
        {
            return fail(RequestError::BadSegments);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) -> Descriptor {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(at)).unwrap();
        Descriptor::new(at, 16, 0, 0)
    }

    fn w(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }
    fn r(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    #[test]
    fn parses_a_read_with_scatter_gather() {
        let m = mem();
        let chain = [
            header(&m, 0x100, 0, 7),
            w(0x1000, 512),
            w(0x2000, 1024),
            w(0x3000, 1),
        ];
        let req = Request::parse(&chain, &m).unwrap();
        assert_eq!(req.kind, RequestType::In);
        assert_eq!(req.sector, 7);
        assert_eq!(req.data_len(), 1536);
        assert_eq!(req.status, GuestAddress(0x3000));
    }

    #[test]
    fn status_is_the_last_byte_of_a_combined_descriptor() {
        let m = mem();
        let chain = [header(&m, 0x100, 0, 0), w(0x1000, 513)];
        let req = Request::parse(&chain, &m).unwrap();
        assert_eq!(req.data, vec![(GuestAddress(0x1000), 512)]);
        assert_eq!(req.status, GuestAddress(0x1200));
    }

    #[test]
    fn refuses_broken_chains() {
        let m = mem();
        assert_eq!(Request::parse(&[], &m).unwrap_err().0, RequestError::Empty);
        // Status not writable: nowhere to report.
        let chain = [header(&m, 0x100, 0, 0), r(0x1000, 512), r(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err(),
            (RequestError::NoStatus, None)
        );
        // A read into a device-readable buffer.
        let chain = [header(&m, 0x100, 0, 0), r(0x1000, 512), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err(),
            (RequestError::WrongDirection, Some(GuestAddress(0x3000)))
        );
        // A write from a device-writable buffer.
        let chain = [header(&m, 0x100, 1, 0), w(0x1000, 512), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::WrongDirection
        );
        // Short or writable header; header outside memory.
        let chain = [r(0x100, 8), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::BadHeader
        );
        let chain = [w(0x100, 16), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::BadHeader
        );
        let chain = [r(0x7f00_0000_0000, 16), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::HeaderOutsideMemory
        );
        // Discard with a partial segment.
        let chain = [header(&m, 0x100, 11, 0), r(0x1000, 15), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::BadSegments
        );
        // A chain the iterator cut short: its last descriptor still has NEXT.
        let cut = Descriptor::new(
            0x3000,
            512,
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
            0,
        );
        let chain = [header(&m, 0x100, 0, 0), cut];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err(),
            (RequestError::NoStatus, None)
        );
        // Status descriptor at the very top of the address space.
        let chain = [header(&m, 0x100, 4, 0), w(u64::MAX, 2)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap_err().0,
            RequestError::NoStatus
        );
    }

    #[test]
    fn unknown_types_parse_as_unsupported() {
        let m = mem();
        let chain = [header(&m, 0x100, 99, 0), w(0x3000, 1)];
        assert_eq!(
            Request::parse(&chain, &m).unwrap().kind,
            RequestType::Unsupported(99)
        );
        for data in [r(0x1000, 512), w(0x1000, 512)] {
            let chain = [header(&m, 0x100, 99, 0), data, w(0x3000, 1)];
            assert_eq!(
                Request::parse(&chain, &m).unwrap().kind,
                RequestType::Unsupported(99)
            );
        }
    }
}
