//! Drives the loaded classifier through `BPF_PROG_TEST_RUN`: packets built field by
//! field with etherparse, the resulting `skb->mark` and return code read back.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use multiroute::apply::datapath::{Capacity, Datapath, Maps};

/// `sizeof(struct __sk_buff)`; `mark` sits at offset 8, `ifindex` (the device
/// the test run's skb arrives on) at 40.
const SKB_CTX_LEN: usize = 192;
const MARK_OFFSET: usize = 8;
const IFINDEX_OFFSET: usize = 40;

/// Which of the object's TC programs a test run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The LAN classifier (and the fast path's outbound half).
    Classifier,
    /// The fast path's reply program on the uplinks.
    Reply,
}

/// What the classifier did to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub return_code: i32,
    pub mark: u32,
}

/// A classifier loaded (not attached) with its maps pinned on a private bpffs.
pub struct LoadedDatapath {
    pub datapath: Datapath,
    pub maps: Maps,
    dir: PathBuf,
}

impl LoadedDatapath {
    pub fn load(name: &str) -> Result<Self> {
        Self::load_sized(name, multiroute_ebpf::FLOW_TABLE_SIZE)
    }

    /// With a flow table of `flows` entries.
    pub fn load_sized(name: &str, flows: u32) -> Result<Self> {
        // Sized for the default `[balance] by = "connection"`, as a router runs.
        let defaults = Capacity::for_balance(multiroute_ebpf::balance::CONNECTION);
        Self::load_with(name, Capacity { flows, ..defaults })
    }

    /// With tables of `capacity`.
    pub fn load_with(name: &str, capacity: Capacity) -> Result<Self> {
        let dir = PathBuf::from("/run").join(format!("mrdp-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating the bpffs mount point")?;
        crate::run("mount", &["-t", "bpf", "bpf", &dir.to_string_lossy()])?;
        let pin_path = dir.join("multiroute");
        let loaded = Datapath::load_sized(&pin_path, capacity)
            .and_then(|datapath| Ok((datapath, Maps::open(&pin_path)?)));
        match loaded {
            Ok((datapath, maps)) => Ok(Self {
                datapath,
                maps,
                dir,
            }),
            Err(err) => {
                // No `Self` to drop: unmount here, or the pins outlive the test.
                unmount(&dir);
                Err(err.into())
            }
        }
    }

    /// Where the maps are pinned.
    pub fn pin_path(&self) -> PathBuf {
        self.dir.join("multiroute")
    }

    /// Runs one packet through the classifier `repeat` times with `mark` preset;
    /// returns the verdict and the kernel's time per run.
    pub fn run(
        &mut self,
        packet: &[u8],
        mark: u32,
        repeat: u32,
    ) -> Result<(Verdict, std::time::Duration)> {
        let program = self.datapath.classifier()?;
        test_run(program, packet, mark, repeat)
    }

    /// Runs one packet through `program` once as if it arrived on `ifindex` (of
    /// the calling thread's network namespace); returns the verdict and the
    /// packet as the program left it.
    pub fn run_on(
        &mut self,
        program: Program,
        packet: &[u8],
        ifindex: u32,
    ) -> Result<(Verdict, Vec<u8>)> {
        let program = match program {
            Program::Classifier => self.datapath.classifier()?,
            Program::Reply => self.datapath.reply_program()?,
        };
        let mut ctx_in = [0u8; SKB_CTX_LEN];
        ctx_in[IFINDEX_OFFSET..IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut data_out = vec![0u8; packet.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut data_out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        data_out.truncate(result.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[MARK_OFFSET..MARK_OFFSET + 4].try_into()?);
        let verdict = Verdict {
            return_code: result.return_value as i32,
            mark,
        };
        Ok((verdict, data_out))
    }

    /// The same through the empty program (the floor benchmarks compare against).
    pub fn run_floor(
        &mut self,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(Verdict, std::time::Duration)> {
        let program = self.datapath.floor_program()?;
        test_run(program, packet, 0, repeat)
    }
}

fn test_run(
    classifier: &mut aya::programs::SchedClassifier,
    packet: &[u8],
    mark: u32,
    repeat: u32,
) -> Result<(Verdict, std::time::Duration)> {
    let mut ctx_in = [0u8; SKB_CTX_LEN];
    ctx_in[MARK_OFFSET..MARK_OFFSET + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; SKB_CTX_LEN];
    let mut data_out = vec![0u8; packet.len().max(64) + 256];
    let result = classifier
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let mark = u32::from_ne_bytes(ctx_out[MARK_OFFSET..MARK_OFFSET + 4].try_into()?);
    Ok((
        Verdict {
            return_code: result.return_value as i32,
            mark,
        },
        result.duration,
    ))
}

impl Drop for LoadedDatapath {
    fn drop(&mut self) {
        let _ = multiroute::apply::datapath::remove(&self.dir.join("multiroute"));
        unmount(&self.dir);
    }
}

fn unmount(dir: &std::path::Path) {
    let _ = crate::run("umount", &[&dir.to_string_lossy()]);
    let _ = std::fs::remove_dir(dir);
}

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr) -> IpStep {
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC).ipv4(src.octets(), dst.octets(), 64)
}

// Writing into a Vec cannot fail, hence the `expect`s below.

/// An Ethernet/IPv4/TCP SYN.
/// An ARP request: not IP, passed untouched.
pub fn arp() -> Vec<u8> {
    let mut frame = Vec::with_capacity(42);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[0x08, 0x06]);
    // htype 1, ptype IPv4, hlen 6, plen 4, op request
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&[100, 64, 0, 2]);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&[100, 64, 0, 1]);
    frame
}

type IpStep = etherparse::PacketBuilderStep<etherparse::IpHeaders>;

/// A TCP SYN behind the IP header `ip` starts.
fn syn(ip: IpStep, sport: u16, dport: u16) -> Vec<u8> {
    let builder = ip.tcp(sport, dport, 1, 65535).syn();
    let mut packet = Vec::with_capacity(builder.size(0));
    builder.write(&mut packet, &[]).expect("write into Vec");
    packet
}

/// A UDP datagram behind the IP header `ip` starts.
fn datagram(ip: IpStep, sport: u16, dport: u16) -> Vec<u8> {
    let builder = ip.udp(sport, dport);
    let mut packet = Vec::with_capacity(builder.size(5));
    builder
        .write(&mut packet, b"query")
        .expect("write into Vec");
    packet
}

pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    syn(ipv4(src, dst), sport, dport)
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    datagram(ipv4(src, dst), sport, dport)
}

pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
    let builder = ipv4(src, dst).icmpv4_echo_request(id, seq);
    let mut packet = Vec::with_capacity(builder.size(4));
    builder.write(&mut packet, b"ping").expect("write into Vec");
    packet
}

fn ipv6(src: Ipv6Addr, dst: Ipv6Addr) -> IpStep {
    PacketBuilder::ethernet2(CLIENT_MAC, ROUTER_MAC).ipv6(src.octets(), dst.octets(), 64)
}

/// Offset of the IPv6 header's next-header byte in an untagged frame.
const IPV6_NEXT_HEADER: usize = 14 + 6;
const IPV6_PAYLOAD_LENGTH: usize = 14 + 4;
/// Where the upper layer (or the first extension header) starts.
pub const IPV6_PAYLOAD: usize = 14 + 40;

pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    syn(ipv6(src, dst), sport, dport)
}

pub fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    datagram(ipv6(src, dst), sport, dport)
}

pub fn icmp6_echo(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16) -> Vec<u8> {
    let builder = ipv6(src, dst).icmpv6_echo_request(id, seq);
    let mut packet = Vec::with_capacity(builder.size(4));
    builder.write(&mut packet, b"ping").expect("write into Vec");
    packet
}

/// `packet` (an untagged IPv6 frame) with an extension header of type `kind`
/// inserted in front of what followed the fixed header. `body` is the header
/// after its next-header byte (length byte included), padded as its type wants.
pub fn with_extension(packet: &[u8], kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = packet[..IPV6_PAYLOAD].to_vec();
    let inner = out[IPV6_NEXT_HEADER];
    out[IPV6_NEXT_HEADER] = kind;
    let length = u16::from_be_bytes([out[IPV6_PAYLOAD_LENGTH], out[IPV6_PAYLOAD_LENGTH + 1]])
        + 1
        + body.len() as u16;
    out[IPV6_PAYLOAD_LENGTH..IPV6_PAYLOAD_LENGTH + 2].copy_from_slice(&length.to_be_bytes());
    out.push(inner);
    out.extend_from_slice(body);
    out.extend_from_slice(&packet[IPV6_PAYLOAD..]);
    out
}

/// Hop-by-hop or destination options: 8 bytes of padding options.
pub const PAD_OPTIONS: [u8; 7] = [0, 1, 4, 0, 0, 0, 0];

/// A fragment header's body: `offset` in 8-byte units, more fragments or not.
pub fn fragment_header(offset: u16, more: bool) -> [u8; 7] {
    let field = (offset << 3) | u16::from(more);
    let [high, low] = field.to_be_bytes();
    [0, high, low, 0, 0, 0, 42]
}

/// `union bpf_attr` as `BPF_MAP_CREATE` reads it (the fields after `max_entries`
/// left zero) and as `BPF_OBJ_PIN` reads it (its first 16 bytes).
#[repr(C)]
#[derive(Default)]
struct BpfAttr {
    words: [u32; 16],
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

fn bpf(command: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-filled `union bpf_attr` prefix the kernel reads
    // only as far as `command` needs; pointers in it outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Replaces the map pinned at `path` with a per-CPU array of `entries` u64, as
/// an older release with fewer counters would have left it.
pub fn pin_older_counters(path: &std::path::Path, entries: u32) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;

    let mut create = BpfAttr::default();
    create.words[..4].copy_from_slice(&[BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, entries]);
    let fd = bpf(BPF_MAP_CREATE, &mut create).context("creating the map")?;
    std::fs::remove_file(path).context("unpinning the current map")?;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let pointer = name.as_ptr() as u64;
    let mut pin = BpfAttr::default();
    pin.words[0] = pointer as u32;
    pin.words[1] = (pointer >> 32) as u32;
    pin.words[2] = fd as u32;
    let pinned = bpf(BPF_OBJ_PIN, &mut pin).context("pinning the map");
    // SAFETY: `fd` is the map's descriptor from BPF_MAP_CREATE, closed once.
    unsafe { libc::close(fd as i32) };
    pinned.map(drop)
}
