// SPDX-License-Identifier: (MIT OR GPL-2.0)
//go:build ignore

// ghostconn's kernel side. Everything here is a tracepoint or an iterator:
// kprobes and fentry are not assumed to exist.
//
// Cost model: every close(), every setsockopt(), every connect() and
// accept() and every timer expiry on the host runs through this file, so the common path of each hook rejects
// uninteresting work with as few memory reads as possible and only
// interesting, rare facts reach the ring buffer.

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOL_SOCKET 1
#define SO_KEEPALIVE 9
#define SOL_TCP 6
#define TCP_KEEPIDLE 4
#define TCP_KEEPINTVL 5
#define TCP_KEEPCNT 6
#define TCP_USER_TIMEOUT 18
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#define EINPROGRESS 115
#define EOPNOTSUPP 95

// Load-time settings, written by the Go loader before load.

// The timer hook compares every expiring timer's function with
// tcp_keepalive_timer's address, as an instruction's immediate rather than
// a load: the loader writes the address from /proc/kallsyms (0 when
// unknown, which no timer matches) over this placeholder in the
// instruction itself (bpf.patchPlaceholder). A load of a setting from
// .rodata was a cold cache line and TLB entry on a quiet host, where the
// hook runs a few times a second: 500 ns and more over the empty program.
enum placeholder {
	PLACEHOLDER_KEEPALIVE_FN = 0x6b6565705f616c76ULL, // "keep_alv"
};
#define PLACEHOLDER_KEEPALIVE_FN_ASM "0x6b6565705f616c76"
_Static_assert(PLACEHOLDER_KEEPALIVE_FN == 0x6b6565705f616c76ULL, "the asm literal is the enum's value");

// keepalive_fn is tcp_keepalive_timer's address, once the loader has
// patched the placeholder.
static __always_inline __u64 keepalive_fn(void)
{
	__u64 v;
	asm volatile("%0 = " PLACEHOLDER_KEEPALIVE_FN_ASM " ll" : "=r"(v));
	return v;
}
// Address of sock_close from /proc/kallsyms: a file is a socket exactly when
// its f_op->release is sock_close. (socket_file_ops itself is data and is
// absent from kallsyms without CONFIG_KALLSYMS_ALL.)
volatile const __u64 sock_close_fn = 0;
// What this kernel gives, probed by the loader (bpf/features.go). A branch
// on a frozen constant is dead code to the verifier, so a helper behind a
// false one is never checked on a kernel that lacks it.
//
// have_cookie_helper: tracing programs may call bpf_get_socket_cookie
// (5.12+). Without it a socket's id is sock_id_key mixed into its address.
volatile const bool have_cookie_helper = true;
// have_task_btf: bpf_get_current_task_btf (5.11+). Without it the task is
// read with probe reads.
volatile const bool have_task_btf = true;
// sock_id_key and sock_id_key2 key the address-derived ids, so that an id
// does not give away a kernel address. The loader derives them from the
// boot id and kernel addresses only CAP_SYSLOG reads, so ids stay the same
// across agent restarts within one boot.
volatile const __u64 sock_id_key = 0;
volatile const __u64 sock_id_key2 = 0;
// self_tgid is the agent's pid, whose own closes are not evidence (0: the
// loader asked to keep every close).
volatile const __u32 self_tgid = 0;

// mix is splitmix64's finalizer, a bijection on 64 bits.
static __always_inline __u64 mix(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

// addr_id is a socket's id where the cookie helper is missing: a keyed
// bijection of its address (two rounds of mix, each after a key), so two
// live sockets never share one and an id cannot be turned back into the
// address without the keys. It costs a probe read, on old kernels only.
// An address, and so an id, can come back after the socket is freed; the
// state hook's end record retires it first.
static __always_inline __u64 addr_id(const void *sk)
{
	// The verifier allows no arithmetic on a BTF pointer: copy its value
	// out of a stack slot with a probe read, which makes it a number.
	const void *volatile slot = sk;
	__u64 x = 0;
	bpf_probe_read_kernel(&x, sizeof(x), (const void *)&slot);
	return mix(mix(x ^ sock_id_key) ^ sock_id_key2);
}

// SOCK_ID(sk) is a socket's id in a tracing program (tp_btf, iter): its
// cookie, generated on first use. The macro keeps the helper's argument
// its BTF pointer type.
#define SOCK_ID(sk) (have_cookie_helper ? bpf_get_socket_cookie(sk) : addr_id(sk))

// stored_id is a socket's id where the helper cannot be called (classic
// tracepoints) or the pointer has no BTF type: the cookie the state hook
// generated, read from the socket.
static __always_inline __u64 stored_id(struct sock *sk)
{
	if (have_cookie_helper)
		return BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	return addr_id(sk);
}

// current_task is the running task, with its BTF type where the kernel
// gives one. Read it with BPF_CORE_READ either way.
static __always_inline struct task_struct *current_task(void)
{
	if (have_task_btf)
		return bpf_get_current_task_btf();
	return (struct task_struct *)bpf_get_current_task();
}

// bpf_rdonly_cast (Linux 6.2) makes any value a read-only pointer of a
// kernel type. Loads through it are direct (faulting loads the JIT guards),
// where bpf_probe_read_kernel is a helper call of 20 to 50 ns each: the
// hooks' *_probe variants, for older kernels, use probe reads instead. The
// verifier replaces the call with a register move, so it costs nothing.
extern void *bpf_rdonly_cast(const void *obj__ign, __u32 btf_id) __ksym;
#define KCAST(ptr, type) ((type *)bpf_rdonly_cast((const void *)(__u64)(ptr), bpf_core_type_id_kernel(type)))
// KWORD loads the 64-bit word at a kernel address as a number, with a
// direct load: as the first field of a struct rb_node cast to sit there (its
// unsigned long __rb_parent_color). A pointer field loaded through a cast
// is typed as untyped memory or a pointer, which neither a global function
// nor pointer arithmetic takes; a number goes everywhere.
#define KWORD(addr) (KCAST((addr), struct rb_node)->__rb_parent_color)

enum event_type {
	EVENT_STATE = 1,
	EVENT_RETRANSMIT = 2,
	EVENT_KEEPALIVE = 3,
	EVENT_CLOSE = 4,
	EVENT_SOCKOPT = 5,
	EVENT_END = 7, // struct end_event: the socket reached CLOSE
};

// owner_op says which syscall gave a process the fd a delta's owner names.
enum owner_op {
	OWNER_OP_CONNECT = 1,
	OWNER_OP_ACCEPT = 2, // accept or accept4
};

enum close_op {
	CLOSE_OP_CLOSE = 1,
	CLOSE_OP_CLOSE_RANGE = 2,
	CLOSE_OP_DUP2 = 3,
	CLOSE_OP_DUP3 = 4,
	CLOSE_OP_EXIT = 5, // the process exited holding the fd (no close call)
};

// close_slot says which close a closes entry keeps. A ghost verdict needs
// the latest close or exit of a copy that is the closer's own (it makes the
// closer, whatever came before), and the latest close of a copy a fork
// child inherited from a parent that still has it (the closer when nothing
// else closed, and otherwise no evidence: it must not push the closer out).
enum close_slot {
	CLOSE_SLOT_OWN = 0,
	CLOSE_SLOT_INHERITED = 1,
};

// Indexes into the stats map.
enum stat_index {
	STAT_LOST_STATE = 0,
	STAT_LOST_RETRANSMIT,
	STAT_LOST_KEEPALIVE,
	STAT_LOST_CLOSE,
	STAT_LOST_SOCKOPT,
	STAT_LOST_DELTA, // a delta deltas or sys_deltas refused (full, or busy in a nested program)
	STAT_CLOSE_LAST_REF, // TCP socket fds closed with no other reference left
	STAT_FOLDED_STATE,   // state changes kept out of the ring (nobody watches them)
	STAT_FOLDED_SOCKOPT, // socket options folded into sys_deltas instead of a record
	STAT_FOLDED_OWNER,   // connect and accept returns folded into sys_deltas
	STAT_DELTA_NEW,      // entries created in deltas and sys_deltas (the agent drains when this moves)
	STAT_MAX,
};

// event_flag names the bits of an event's flags.
enum event_flag {
	EVENT_FLAG_TASK = 2, // pid/comm name the task that caused the event
};

// tuple is where a socket is: its namespace, family, ports and addresses.
struct tuple {
	__u32 netns; // inode number of the socket's network namespace
	__u8 family;
	__u8 pad;
	__u16 sport;
	__u16 dport;
	__u16 pad2;
	__u8 saddr[16];
	__u8 daddr[16];
};

// tcp_part is what a TCP socket says of its keepalive and give-up settings
// and its retransmissions, read at the moment of the record.
struct tcp_part {
	__u32 retransmits; // consecutive RTO retransmissions (icsk_retransmits)
	__u32 total_retrans;
	__u32 rto_jiffies;
	__u32 ka_time;   // socket keepalive idle in jiffies, 0 = netns default
	__u32 ka_intvl;  // jiffies, 0 = netns default
	__u32 ka_probes; // 0 = netns default
	__u32 user_timeout_ms;
	__u8 keepalive; // SO_KEEPALIVE is set
	__u8 backoff;
	__u8 probes_out; // keepalive/zero-window probes outstanding
	__u8 pad;
};

// One ring-buffer record. Which fields are meaningful depends on type; the
// Go side decodes this layout through the type bpf2go generates from it.
//
// EVENT_HEAD is how every record starts, struct event and struct end_event
// alike: the reader finds the type at the same place in both.
#define EVENT_HEAD                                                                                   \
	__u64 ts_ns;  /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */                                      \
	__u64 cookie; /* socket cookie; 0 when the socket never had one */                          \
	__u64 ino;    /* socket inode (close and sockopt events) */                                  \
	__u32 pid;    /* tgid of the task, when EVENT_FLAG_TASK is set */                            \
	__u32 ppid;   /* parent tgid of the task (close events) */                                   \
	__s32 fd;     /* close and sockopt events */                                                 \
	__u8 type;    /* enum event_type */                                                          \
	__u8 old_state;                                                                              \
	__u8 state; /* new state for state and end events, current state otherwise */               \
	__u8 flags; /* EVENT_FLAG_* */                                                               \
	__u8 op;    /* enum close_op for close events */                                             \
	__u8 pad[3];                                                                                 \
	struct tuple tuple;                                                                          \
	char comm[16];
struct event {
	EVENT_HEAD
	struct tcp_part tcp;
	__u32 refs;         // close: references to the file before this close
	__u32 idle_jiffies; // keepalive: jiffies since the last data received
	__s32 level;        // sockopt
	__s32 optname;
	__s32 optval;
	// close: the socket's write_seq and copied_seq at the close. If either
	// moves afterwards, a remaining holder is using the socket (a handoff,
	// not a ghost).
	__u32 write_seq;
	__u32 copied_seq;
	__u32 pad2;
};

// delta_part says which parts of a state_delta or sys_delta hold news.
enum delta_part {
	DELTA_STATE = 1,   // state was entered at state_ns (est_ns: ESTABLISHED)
	DELTA_OWNER = 2,   // owner_*: a connect or accept returned an fd of it
	DELTA_SOCKOPT = 4, // opt_*: the application set keepalive or give-up options
	DELTA_TCP = 8,     // tcp was read at the state change
};

// state_delta is what the state hook learnt of one socket since the agent
// last drained the deltas map: the latest state it entered, when, and the
// tuple and TCP fields read then.
struct state_delta {
	__u64 first_ns; // the first change kept in this entry
	__u64 state_ns; // when the socket entered state (DELTA_STATE)
	__u64 est_ns;   // when it became ESTABLISHED, if within this entry
	struct tuple tuple;
	struct tcp_part tcp;
	__u32 parts;   // enum delta_part: DELTA_STATE, DELTA_TCP
	__u8 state;    // the state entered at state_ns
	__u8 est_from; // SYN_SENT or SYN_RECV, with est_ns
	__u8 pad[2];
};

// sys_delta is what the syscall hooks learnt of one socket since the agent
// last drained the sys_deltas map: the process whose connect or accept
// returned it (DELTA_OWNER) and the options it set (DELTA_SOCKOPT), each
// the latest of its kind, with the tuple and state the hook read (they
// announce a connection the agent does not know yet).
struct sys_delta {
	__u64 first_ns; // the first change kept in this entry
	__u64 owner_ns;
	__u64 opt_ns; // the latest setsockopt
	__u64 ino;    // socket inode, from the owner's fd
	struct tuple tuple;
	__u32 parts;   // enum delta_part: DELTA_OWNER, DELTA_SOCKOPT
	__u8 state;    // as the hook read it
	__u8 owner_op; // enum owner_op
	__u8 pad[2];
	__u32 owner_pid; // tgid
	__u32 owner_ppid;
	__s32 owner_fd;
	__u32 opt_pid;  // tgid of the latest setsockopt
	__u32 opt_mask; // enum sockopt_bit: which opt_ values were set
	__s32 opt_keepalive;
	__s32 opt_keep_idle;  // seconds
	__s32 opt_keep_intvl; // seconds
	__s32 opt_keep_cnt;
	__s32 opt_user_timeout_ms;
	char owner_comm[16]; // the owner's thread group leader
};

// end_event is the record of a socket's CLOSE: its final state change and,
// when the agent had not drained them yet, the socket's deltas (the state
// hook's and the syscall hooks'), so that a short-lived connection costs
// this one record. It starts as struct event does, without the fields an
// end does not use.
struct end_event {
	EVENT_HEAD
	struct state_delta d; // from deltas; all zero (parts 0) when none was pending
	struct sys_delta s;   // from sys_deltas, likewise
};
_Static_assert(__builtin_offsetof(struct end_event, comm) == __builtin_offsetof(struct event, comm),
	       "an end record starts as every record does");

// events carries struct event records to user space.
// Writers: every tracepoint program. Reader: the Go collector. Records are
// consumed, never deleted.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // resized by the loader
} events SEC(".maps");

// stats holds per-CPU counters indexed by enum stat_index.
// Writers: the tracepoint programs (ring-buffer reserve failures, last-ref
// closes). Reader: the Go collector, which sums the CPUs. Never deleted.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

// close_rec is the evidence of one close (or exit) of an fd of a socket
// that left other references behind.
struct close_rec {
	__u64 ts_ns;
	__u32 pid;
	__u32 ppid;
	__s32 fd;
	__u32 refs;
	__u32 write_seq;
	__u32 copied_seq;
	__u8 op;
	__u8 pad[3];
	// ino is the socket's inode (sockfs numbers are 32-bit): where ids are
	// addresses, a record whose socket was freed while no agent ran, and
	// whose address a new socket took, is told apart by it.
	__u32 ino;
	char comm[16];
};

// close_key names one slot of a socket's close evidence.
struct close_key {
	__u64 cookie;
	__u32 slot; // enum close_slot
	__u32 pad;
};

// closes keeps close_rec by socket cookie and slot, at most two per socket,
// each close replacing the one in its slot with a single update. It is
// pinned in bpffs, so ghost evidence survives an agent restart or crash.
// Writer: on_fd_close (close, close_range, dup2, dup3 and process exit).
// Reader: the agent, at start, which replays both slots in time order.
// Deleter: the agent, for sockets that are gone; LRU eviction bounds it
// meanwhile.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct close_key);
	__type(value, struct close_rec);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} closes SEC(".maps");

// connect_fds holds the fd of each connect() in progress, by pid_tgid, so
// that its exit, whose arguments the tracepoint no longer has, can find the
// socket, on kernels that run sys_exit_connect_probe (before 6.2; the
// direct-load sys_exit_connect reads the fd from the task's registers, and
// sys_enter_connect is not loaded beside it). Writer: sys_enter_connect (AF_INET and AF_INET6 addresses only).
// Reader and deleter: sys_exit_connect, on the same thread's return. An
// entry whose exit never ran (the agent attached between the two) is
// overwritten by the thread's next connect or evicted by the LRU bound;
// nothing in user space touches the map.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);   // bpf_get_current_pid_tgid()
	__type(value, __u32); // the fd
} connect_fds SEC(".maps");

// watch_key indexes the single entry of the watch map.
enum watch_flag {
	WATCH_STATES = 0, // nonzero while a watch client asks for state changes
	WATCH_MAX,
};

// watch holds the agent's requests for extra records. Writer: the agent,
// when its first watch client subscribes (1) and its last one leaves (0).
// Readers: the state and setsockopt hooks, which stream every transition and
// option only while it is set. Never deleted.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCH_MAX);
	__type(key, __u32);
	__type(value, __u32);
} watch SEC(".maps");

// sockopt_bit names the options a sys_delta holds.
enum sockopt_bit {
	SOCKOPT_KEEPALIVE = 1,
	SOCKOPT_KEEPIDLE = 2,
	SOCKOPT_KEEPINTVL = 4,
	SOCKOPT_KEEPCNT = 8,
	SOCKOPT_USER_TIMEOUT = 16,
};

// deltas holds, by socket cookie, what the state hook learnt of a socket
// since the agent last looked, so that a connection costs a map entry
// instead of a record per change while nobody watches. Writer: the state
// hook (ESTABLISHED, CLOSE_WAIT, leaving ESTABLISHED), which runs under the
// socket's lock, so no two writers of one socket's entry race. It copies the
// entry, changes the copy and writes it back whole, so that a change racing
// with the agent's drain lands in a new entry instead of a freed one.
// Readers and deleters: the state hook at CLOSE, which moves the entry into
// the socket's end record, and the agent, which drains the map on every
// poll. A full map refuses the change; the refusal is counted
// (STAT_LOST_DELTA) and the next snapshot repairs the table.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64); // socket cookie
	__type(value, struct state_delta);
} deltas SEC(".maps");

// sys_deltas is deltas for the syscall hooks, which hold no socket lock:
// the process whose connect or accept returned a socket (DELTA_OWNER) and
// the keepalive and give-up options it set (DELTA_SOCKOPT). Kept apart
// from deltas, so that a hook that copies an entry while the state hook
// writes the socket's state on another CPU cannot write the old state back
// (it lost CLOSE_WAIT until the next snapshot). Writers: sys_exit_connect,
// sys_exit_accept and sys_exit_accept4, sys_enter_setsockopt, each copying
// and writing back as the state hook does. Readers and deleters: as for
// deltas.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64); // socket cookie
	__type(value, struct sys_delta);
} sys_deltas SEC(".maps");

// Force the generated Go types.
const struct event *unused_event __attribute__((unused));
const struct close_rec *unused_close_rec __attribute__((unused));
const struct close_key *unused_close_key __attribute__((unused));
const enum close_slot *unused_close_slot __attribute__((unused));
const enum event_type *unused_event_type __attribute__((unused));
const enum stat_index *unused_stat_index __attribute__((unused));
const enum close_op *unused_close_op __attribute__((unused));
const enum owner_op *unused_owner_op __attribute__((unused));
const enum sockopt_bit *unused_sockopt_bit __attribute__((unused));
const enum watch_flag *unused_watch_flag __attribute__((unused));
const struct state_delta *unused_state_delta __attribute__((unused));
const struct sys_delta *unused_sys_delta __attribute__((unused));
const struct end_event *unused_end_event __attribute__((unused));
const enum event_flag *unused_event_flag __attribute__((unused));
const enum delta_part *unused_delta_part __attribute__((unused));
const enum placeholder *unused_placeholder __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	// Atomic: a program in softirq can interrupt another on this CPU
	// between its load and its store of the same counter.
	if (v)
		__sync_fetch_and_add(v, 1);
}

// watching reports whether a watch client asks for every state change and
// option.
static __always_inline bool watching(void)
{
	__u32 k = WATCH_STATES;
	__u32 *v = bpf_map_lookup_elem(&watch, &k);
	return v && *v;
}

static __always_inline struct event *reserve(__u32 lost_idx)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(struct event), 0);
	if (!e) {
		count(lost_idx);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	return e;
}

// submit never wakes the reader: the reader polls (every 100ms, sooner
// while records flow). A wakeup is an irq_work self-interrupt, and the
// softirqs that run when it returns process packets inside this program's
// frame: the state changes they cause find the program already running on
// the CPU, and the kernel skips them (a recursion miss, an event lost).
static __always_inline void submit(struct event *e)
{
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
}

// set_task names the current task in a record (struct event or struct
// end_event: both start with EVENT_HEAD).
#define set_task(e)                                                    \
	do {                                                           \
		(e)->pid = bpf_get_current_pid_tgid() >> 32;           \
		bpf_get_current_comm((e)->comm, sizeof((e)->comm));    \
		(e)->flags |= EVENT_FLAG_TASK;                         \
	} while (0)

// read_addrs copies the local and remote address of a socket. (Not
// BPF_CORE_READ_INTO: it sizes the read by the destination's element.)
static __always_inline void read_addrs(__u8 family, __u8 *saddr, __u8 *daddr, struct sock_common *skc)
{
	if (family == AF_INET) {
		bpf_core_read(saddr, 4, &skc->skc_rcv_saddr);
		bpf_core_read(daddr, 4, &skc->skc_daddr);
	} else {
		bpf_core_read(saddr, 16, &skc->skc_v6_rcv_saddr);
		bpf_core_read(daddr, 16, &skc->skc_v6_daddr);
	}
}

// fill_tuple copies family, ports, addresses and netns from a socket whose
// pointer may be untrusted, so every read goes through CO-RE probe reads.
static __always_inline void fill_tuple(struct tuple *t, struct sock *sk)
{
	t->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->dport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	read_addrs(t->family, t->saddr, t->daddr, &sk->__sk_common);
}

// fill_tuple_btf is fill_tuple for a trusted socket pointer (a tp_btf
// argument): plain CO-RE-relocated loads instead of probe-read calls.
static __always_inline void fill_tuple_btf(struct tuple *t, struct sock *sk)
{
	struct sock_common *skc = &sk->__sk_common;
	t->family = skc->skc_family;
	t->sport = skc->skc_num;
	t->dport = __builtin_bswap16(skc->skc_dport);
	t->netns = skc->skc_net.net->ns.inum;
	if (t->family == AF_INET) {
		__builtin_memcpy(t->saddr, &skc->skc_rcv_saddr, 4);
		__builtin_memcpy(t->daddr, &skc->skc_daddr, 4);
	} else {
		__builtin_memcpy(t->saddr, &skc->skc_v6_rcv_saddr, 16);
		__builtin_memcpy(t->daddr, &skc->skc_v6_daddr, 16);
	}
}

// fill_tcp_btf reads keepalive settings and retransmission counters of a
// trusted socket with plain loads.
static __always_inline void fill_tcp_tp(struct tcp_part *p, struct sock *sk, struct tcp_sock *tp)
{
	p->keepalive = !!(sk->__sk_common.skc_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_KEEPOPEN)));
	p->ka_time = tp->keepalive_time;
	p->ka_intvl = tp->keepalive_intvl;
	p->ka_probes = BPF_CORE_READ_BITFIELD_PROBED(tp, keepalive_probes);
	p->user_timeout_ms = tp->inet_conn.icsk_user_timeout;
	p->retransmits = tp->inet_conn.icsk_retransmits;
	p->backoff = tp->inet_conn.icsk_backoff;
	p->probes_out = tp->inet_conn.icsk_probes_out;
	p->rto_jiffies = tp->inet_conn.icsk_rto;
	p->total_retrans = tp->total_retrans;
}

static __always_inline void fill_tcp_btf(struct tcp_part *p, struct sock *sk)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		fill_tcp_tp(p, sk, tp);
}

// fill_tcp is fill_tcp_btf for an untrusted socket pointer.
static __always_inline void fill_tcp(struct tcp_part *p, struct sock *sk)
{
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	unsigned long flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
	p->keepalive = !!(flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_KEEPOPEN)));
	p->ka_time = BPF_CORE_READ(tp, keepalive_time);
	p->ka_intvl = BPF_CORE_READ(tp, keepalive_intvl);
	p->ka_probes = BPF_CORE_READ_BITFIELD_PROBED(tp, keepalive_probes);
	p->user_timeout_ms = BPF_CORE_READ(tp, inet_conn.icsk_user_timeout);
	p->retransmits = BPF_CORE_READ(tp, inet_conn.icsk_retransmits);
	p->backoff = BPF_CORE_READ(tp, inet_conn.icsk_backoff);
	p->probes_out = BPF_CORE_READ(tp, inet_conn.icsk_probes_out);
	p->rto_jiffies = BPF_CORE_READ(tp, inet_conn.icsk_rto);
	p->total_retrans = BPF_CORE_READ(tp, total_retrans);
}

// state_by_syscall reports transitions that only a syscall on the socket
// (connect, listen, shutdown, close) can cause, so the current task is the
// one responsible. Others may run in softirq on behalf of an unrelated task.
static __always_inline bool state_by_syscall(int old, int new)
{
	switch (new) {
	case TCP_SYN_SENT:
	case TCP_LISTEN:
	case TCP_LAST_ACK:
		return true;
	case TCP_FIN_WAIT1:
		return old == TCP_ESTABLISHED || old == TCP_SYN_RECV;
	case TCP_CLOSE:
		return old == TCP_LISTEN || old == TCP_SYN_SENT;
	}
	return false;
}

// state_folded says which transitions change a socket's delta while nobody
// watches: a connection that became ESTABLISHED, the peer's close
// (CLOSE_WAIT, a verdict's start) and the local one (leaving ESTABLISHED).
// The handshake's SYN states and the teardown's FIN_WAIT2, CLOSING,
// LAST_ACK and TIME_WAIT are only counted: the socket itself keeps its
// state, which a snapshot reads, and its CLOSE ends it.
static __always_inline bool state_folded(int old, int new)
{
	return new == TCP_ESTABLISHED || new == TCP_CLOSE_WAIT || old == TCP_ESTABLISHED;
}

// state_load and sys_load copy the socket's pending delta (in deltas or
// sys_deltas) into d, or start an empty one; the caller changes it and
// stores it with delta_store. They report whether the socket had one.
static __always_inline bool state_load(__u64 cookie, struct state_delta *d, __u64 now)
{
	struct state_delta *old = bpf_map_lookup_elem(&deltas, &cookie);
	if (old) {
		__builtin_memcpy(d, old, sizeof(*d));
		return true;
	}
	__builtin_memset(d, 0, sizeof(*d));
	d->first_ns = now;
	return false;
}

static __always_inline bool sys_load(__u64 cookie, struct sys_delta *d, __u64 now)
{
	struct sys_delta *old = bpf_map_lookup_elem(&sys_deltas, &cookie);
	if (old) {
		__builtin_memcpy(d, old, sizeof(*d));
		return true;
	}
	__builtin_memset(d, 0, sizeof(*d));
	d->first_ns = now;
	return false;
}

// delta_store writes d back whole into map (see the deltas map). An entry
// it creates (a new one, or one the agent drained since the load) is
// counted in STAT_DELTA_NEW once it is in the map: the agent skips a
// drain when that count has not moved since the last one, so a count
// before the entry could let a drain begun in between miss it.
static __always_inline void delta_store(void *map, __u64 cookie, void *d, bool existed)
{
	if (existed && !bpf_map_update_elem(map, &cookie, d, BPF_EXIST))
		return;
	if (bpf_map_update_elem(map, &cookie, d, BPF_ANY)) {
		count(STAT_LOST_DELTA);
		return;
	}
	count(STAT_DELTA_NEW);
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit_skb, struct sock *sk, struct sk_buff *skb)
{
	struct event *e = reserve(STAT_LOST_RETRANSMIT);
	if (!e)
		return 0;
	e->type = EVENT_RETRANSMIT;
	e->cookie = SOCK_ID(sk);
	e->state = sk->__sk_common.skc_state;
	fill_tuple_btf(&e->tuple, sk);
	fill_tcp_btf(&e->tcp, sk);
	submit(e);
	return 0;
}

// Some kernels (Debian's 6.1 among them) keep the keepalive timer in
// inet_connection_sock rather than in sock.sk_timer.
struct inet_connection_sock___ka {
	struct timer_list icsk_keepalive_timer;
} __attribute__((preserve_access_index));

// keepalive_timer_sock returns the socket that owns a keepalive timer.
static __always_inline struct sock *keepalive_timer_sock(struct timer_list *timer)
{
	if (bpf_core_field_exists(struct inet_connection_sock___ka, icsk_keepalive_timer))
		return (void *)timer - bpf_core_field_offset(struct inet_connection_sock___ka, icsk_keepalive_timer);
	return (void *)timer - bpf_core_field_offset(struct sock, sk_timer);
}

// on_keepalive records a keepalive timer's expiry. fast reads the socket
// with direct loads (bpf_rdonly_cast, 6.2+), else with probe reads.
static __always_inline void on_keepalive(struct timer_list *timer, bool fast)
{
	// The verifier allows direct access only within timer_list, so the
	// enclosing socket is cast, or read with probe reads.
	struct sock *sk = keepalive_timer_sock(timer);
	struct event *e = reserve(STAT_LOST_KEEPALIVE);
	if (!e)
		return;
	e->type = EVENT_KEEPALIVE;
	__u32 now = (__u32)bpf_jiffies64(), lrcv, rcv_ts;
	if (fast) {
		struct tcp_sock *tp = KCAST(sk, struct tcp_sock);
		sk = (struct sock *)tp;
		e->cookie = have_cookie_helper ? sk->__sk_common.skc_cookie.counter : addr_id(sk);
		e->state = sk->__sk_common.skc_state;
		fill_tuple_btf(&e->tuple, sk);
		fill_tcp_tp(&e->tcp, sk, tp);
		lrcv = tp->inet_conn.icsk_ack.lrcvtime;
		rcv_ts = tp->rcv_tstamp;
	} else {
		struct tcp_sock *tp = (struct tcp_sock *)sk;
		e->cookie = stored_id(sk);
		e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
		fill_tuple(&e->tuple, sk);
		fill_tcp(&e->tcp, sk);
		lrcv = BPF_CORE_READ(tp, inet_conn.icsk_ack.lrcvtime);
		rcv_ts = BPF_CORE_READ(tp, rcv_tstamp);
	}
	__u32 a = now - lrcv, b = now - rcv_ts;
	e->idle_jiffies = a < b ? a : b;
	submit(e);
}

// keepalive_hit and keepalive_hit_probe are on_keepalive as subprograms of
// their own, so that the timer hook's common path (compare and leave) is a
// few instructions in one cache line, not a jump over the record's code to
// the program's end.
static __noinline int keepalive_hit(struct timer_list *timer)
{
	on_keepalive(timer, true);
	return 0;
}

static __noinline int keepalive_hit_probe(struct timer_list *timer)
{
	on_keepalive(timer, false);
	return 0;
}

// timer_expire_entry runs for every timer on the host; all but keepalive
// timers leave after one load and one compare.
SEC("tp_btf/timer_expire_entry")
int BPF_PROG(timer_expire_entry, struct timer_list *timer, unsigned long baseclk)
{
	if ((__u64)timer->function != keepalive_fn())
		return 0;
	return keepalive_hit(timer);
}

SEC("tp_btf/timer_expire_entry")
int BPF_PROG(timer_expire_entry_probe, struct timer_list *timer, unsigned long baseclk)
{
	if ((__u64)timer->function != keepalive_fn())
		return 0;
	return keepalive_hit_probe(timer);
}

// file_ref_count returns how many references a struct file holds, on kernels
// with file_ref_t f_ref (6.13+, 0 means one) and atomic_long_t f_count.
struct file___old {
	atomic_long_t f_count;
} __attribute__((preserve_access_index));

static __always_inline __u32 file_ref_count(struct file *f)
{
	if (bpf_core_field_exists(struct file, f_ref))
		return BPF_CORE_READ(f, f_ref.refcnt.counter) + 1;
	return BPF_CORE_READ((struct file___old *)f, f_count.counter);
}

// fd_file returns the file behind fd in the current task, or NULL.
static __always_inline struct file *fd_file(struct fdtable *fdt, __u32 fd)
{
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return NULL;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline struct fdtable *current_fdtable(void)
{
	struct task_struct *task = current_task();
	return BPF_CORE_READ(task, files, fdt);
}

// current_fd_file is fd_file for the current task on the hooks' hot path:
// direct loads through the task's BTF pointer to its fd table, and one
// probe read, of the fd's slot (the verifier gives no BTF type to a
// pointer to pointers). It sets *fdt to the table. Before 5.11 (no task
// BTF) it is fd_file over current_fdtable.
static __always_inline struct file *current_fd_file(__u32 fd, __u64 *fdt)
{
	if (!have_task_btf) {
		struct fdtable *t = current_fdtable();
		*fdt = (__u64)t;
		return fd_file(t, fd);
	}
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *t = task->files->fdt;
	*fdt = (__u64)t;
	if (fd >= t->max_fds)
		return NULL;
	struct file **fds = t->fd;
	struct file *f = NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

// tcp_sock_of returns the TCP socket behind a file, or NULL for any other
// file. The f_op->release compare rejects non-sockets with two reads.
//
// An MPTCP socket (Go listens with MPTCP by default since 1.24) resolves to
// its first subflow, the TCP socket that carries the connection and whose
// state changes the tracepoints see.
static __always_inline struct sock *tcp_sock_of(struct file *f)
{
	if (!f || (__u64)BPF_CORE_READ(f, f_op, release) != sock_close_fn)
		return NULL;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk || BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return NULL;
	__u16 proto = BPF_CORE_READ(sk, sk_protocol);
	if (proto == IPPROTO_MPTCP && bpf_core_type_exists(struct mptcp_sock)) {
		sk = BPF_CORE_READ((struct mptcp_sock *)sk, first);
		if (!sk)
			return NULL;
		proto = BPF_CORE_READ(sk, sk_protocol);
	}
	if (proto != IPPROTO_TCP)
		return NULL;
	__u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (fam != AF_INET && fam != AF_INET6)
		return NULL;
	return sk;
}

// current_fd_file_cast, tcp_sock_of_cast, file_ref_count_cast and
// stored_id_cast are current_fd_file, tcp_sock_of, file_ref_count and
// stored_id with direct loads through bpf_rdonly_cast (6.2+): a close of a
// non-socket fd costs seven loads and one compare, where the probe reads
// were three helper calls.
static __always_inline struct file *current_fd_file_cast(__u32 fd, __u64 *fdt, __u64 *fraw)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *t = task->files->fdt;
	*fdt = (__u64)t;
	if (fd >= t->max_fds)
		return NULL;
	// t->fd points at pointers, which the verifier types as a number; the
	// fd's slot is read as a number too.
	*fraw = KWORD((__u64)t->fd + (__u64)fd * sizeof(struct file *));
	return KCAST(*fraw, struct file);
}

static __always_inline struct sock *tcp_sock_of_cast(struct file *f)
{
	if (!f || (__u64)f->f_op->release != sock_close_fn)
		return NULL;
	struct socket *sock = KCAST(f->private_data, struct socket);
	struct sock *sk = sock->sk;
	if (!sk || sk->sk_type != SOCK_STREAM)
		return NULL;
	__u16 proto = sk->sk_protocol;
	if (proto == IPPROTO_MPTCP && bpf_core_type_exists(struct mptcp_sock)) {
		sk = KCAST(sk, struct mptcp_sock)->first;
		if (!sk)
			return NULL;
		proto = sk->sk_protocol;
	}
	if (proto != IPPROTO_TCP)
		return NULL;
	__u16 fam = sk->__sk_common.skc_family;
	if (fam != AF_INET && fam != AF_INET6)
		return NULL;
	return sk;
}

static __always_inline __u32 file_ref_count_cast(struct file *f)
{
	if (bpf_core_field_exists(struct file, f_ref))
		return f->f_ref.refcnt.counter + 1;
	return KCAST(f, struct file___old)->f_count.counter;
}

static __always_inline __u64 stored_id_cast(struct sock *sk)
{
	if (have_cookie_helper)
		return sk->__sk_common.skc_cookie.counter;
	return addr_id(sk);
}

// fd_sock is the TCP socket behind the current task's fd, or NULL; fast
// picks the direct loads. *fp is the file, *fraw its address as a number
// (what global functions and compares with probe-read pointers take),
// *fdt the task's fd table.
static __always_inline struct sock *fd_sock(__u32 fd, struct file **fp, __u64 *fraw, __u64 *fdt, bool fast)
{
	if (fast) {
		*fp = current_fd_file_cast(fd, fdt, fraw);
		return tcp_sock_of_cast(*fp);
	}
	*fp = current_fd_file(fd, fdt);
	*fraw = (__u64)*fp;
	return tcp_sock_of(*fp);
}

// take_state and take_sys move the socket's pending delta, if any, into
// d. When the agent's drain took the entry meanwhile, it has the delta, and
// the copy may be of the element reused for another socket: d is cleared.
static __always_inline void take_state(__u64 cookie, struct state_delta *d)
{
	struct state_delta *p = bpf_map_lookup_elem(&deltas, &cookie);
	if (!p)
		return;
	__builtin_memcpy(d, p, sizeof(*d));
	if (bpf_map_delete_elem(&deltas, &cookie))
		d->parts = 0;
}

static __always_inline void take_sys(__u64 cookie, struct sys_delta *d)
{
	struct sys_delta *p = bpf_map_lookup_elem(&sys_deltas, &cookie);
	if (!p)
		return;
	__builtin_memcpy(d, p, sizeof(*d));
	if (bpf_map_delete_elem(&sys_deltas, &cookie))
		d->parts = 0;
}

// emit_end sends the record of a socket's CLOSE, with its pending deltas
// (which it deletes) when the agent has not drained them yet.
static __always_inline void emit_end(struct sock *sk, __u64 cookie, int oldstate)
{
	struct end_event *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
	if (!r) {
		count(STAT_LOST_STATE);
		// A delta left behind would bring the socket back to life.
		bpf_map_delete_elem(&deltas, &cookie);
		bpf_map_delete_elem(&sys_deltas, &cookie);
		return;
	}
	__builtin_memset(r, 0, sizeof(*r));
	r->ts_ns = bpf_ktime_get_ns();
	r->type = EVENT_END;
	r->cookie = cookie;
	r->old_state = oldstate;
	r->state = TCP_CLOSE;
	fill_tuple_btf(&r->tuple, sk);
	if (state_by_syscall(oldstate, TCP_CLOSE))
		set_task(r);
	take_state(cookie, &r->d);
	take_sys(cookie, &r->s);
	bpf_ringbuf_submit(r, BPF_RB_NO_WAKEUP);
}

// stream_state sends one state change as its own record (LISTEN, and every
// change while a watch client asks for them).
static __always_inline void stream_state(struct sock *sk, __u64 cookie, int oldstate, int newstate)
{
	struct event *e = reserve(STAT_LOST_STATE);
	if (!e)
		return;
	e->type = EVENT_STATE;
	e->cookie = cookie;
	e->old_state = oldstate;
	e->state = newstate;
	fill_tuple_btf(&e->tuple, sk);
	if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE_WAIT)
		fill_tcp_btf(&e->tcp, sk);
	if (state_by_syscall(oldstate, newstate))
		set_task(e);
	submit(e);
}

// fold_state writes a state change into the socket's delta.
static __always_inline void fold_state(struct sock *sk, __u64 cookie, int oldstate, int newstate)
{
	__u64 now = bpf_ktime_get_ns();
	struct state_delta d;
	bool existed = state_load(cookie, &d, now);
	d.parts |= DELTA_STATE;
	d.state = newstate;
	d.state_ns = now;
	if (newstate == TCP_ESTABLISHED) {
		d.est_ns = now;
		d.est_from = oldstate;
	}
	// A socket on its way to CLOSE may be unhashed already, its local port
	// 0: keep the tuple it had.
	if (!d.tuple.family || sk->__sk_common.skc_num)
		fill_tuple_btf(&d.tuple, sk);
	if (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE_WAIT) {
		fill_tcp_btf(&d.tcp, sk);
		d.parts |= DELTA_TCP;
	}
	delta_store(&deltas, cookie, &d, existed);
	count(STAT_FOLDED_STATE);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	// Every socket gets its cookie here: the owner, setsockopt and close
	// hooks only read it.
	__u64 cookie = SOCK_ID(sk);
	if (newstate == TCP_CLOSE) {
		emit_end(sk, cookie, oldstate);
		return 0;
	}
	if (newstate == TCP_LISTEN || watching()) {
		stream_state(sk, cookie, oldstate, newstate);
		return 0;
	}
	if (state_folded(oldstate, newstate))
		fold_state(sk, cookie, oldstate, newstate);
	else
		count(STAT_FOLDED_STATE);
	return 0;
}

// on_fd_close records the close of fd when it is a TCP socket that other
// references keep open. A close of the last reference is only counted: the
// state change that follows tells the rest.
//
// holds_ctx is fdt_holds' state across the words of an open_fds bitmap.
struct holds_ctx {
	unsigned long *open_fds;
	struct file **fds;
	struct file *f;
	bool found;
};

static long holds_word(__u32 i, struct holds_ctx *c)
{
	unsigned long word = 0;
	bpf_probe_read_kernel(&word, sizeof(word), &c->open_fds[i]);
	if (!word)
		return 0;
	for (int bit = 0; bit < 64; bit++) {
		if (!(word & (1UL << bit)))
			continue;
		struct file *g = NULL;
		bpf_probe_read_kernel(&g, sizeof(g), &c->fds[i * 64 + bit]);
		if (g == c->f) {
			c->found = true;
			return 1;
		}
	}
	return 0;
}

// fdt_holds reports whether the fd table at fdt has the file f open at any
// fd: one read per 64 fds and one per open fd. It runs only for a close
// that leaves references, and only when the parent does not have the file
// at the closed fd. A global function (fdt and f are kernel addresses),
// checked once by the verifier.
__noinline int fdt_holds(__u64 fdt, __u64 f)
{
	struct fdtable *t = (struct fdtable *)fdt;
	struct holds_ctx c = { .f = (struct file *)f };
	__u32 max = BPF_CORE_READ(t, max_fds);
	c.open_fds = BPF_CORE_READ(t, open_fds);
	c.fds = BPF_CORE_READ(t, fd);
	__u32 words = (max + 63) / 64;
	if (words > 1 << 16)
		words = 1 << 16;
	bpf_loop(words, holds_word, &c, 0);
	return c.found;
}

// The record goes to the closes slot of its kind: a copy whose parent
// process still has the same file, at the same fd or another (a shell
// saves an fd above 10 before it closes it), is an inherited copy, whose
// close must not push the closer out of the own slot. Everything else is
// the closer's own, a never-exec'd prefork worker's close of the socket it
// accepted included. The exit of a child whose parent still has the file
// is no evidence at all (the collector ignores it too), so it is not kept;
// other exits go to the own slot. scan false leaves out the search of the
// parent's whole table (fdt_holds), for the *_noloop hooks.
static __always_inline void on_fd_close(struct fdtable *fdt, struct file *f, __u64 fraw, struct sock *sk, __u32 fd,
					__u8 op, bool scan, bool fast)
{
	if (!sk)
		return;
	__u32 refs = fast ? file_ref_count_cast(f) : file_ref_count(f);
	if (refs <= 1) {
		count(STAT_CLOSE_LAST_REF);
		return;
	}
	// The agent's own copy of a holder's fd (kill --graceful, keepalive
	// through a holder) is no evidence of what the application did.
	if (self_tgid && (bpf_get_current_pid_tgid() >> 32) == self_tgid)
		return;
	struct event *e = reserve(STAT_LOST_CLOSE);
	if (!e)
		return;
	e->type = EVENT_CLOSE;
	e->op = op;
	e->fd = fd;
	e->refs = refs;
	e->cookie = stored_id(sk);
	e->ino = BPF_CORE_READ(f, f_inode, i_ino);
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	e->write_seq = BPF_CORE_READ((struct tcp_sock *)sk, write_seq);
	e->copied_seq = BPF_CORE_READ((struct tcp_sock *)sk, copied_seq);
	fill_tuple(&e->tuple, sk);
	set_task(e);
	struct task_struct *task = current_task();
	struct task_struct *parent = BPF_CORE_READ(task, real_parent);
	e->ppid = BPF_CORE_READ(parent, tgid);
	// Does the parent still have this file? At the same fd first (the
	// common case, one read), else anywhere in its table.
	struct fdtable *pfdt = BPF_CORE_READ(parent, files, fdt);
	bool parent_has = pfdt && pfdt != fdt &&
			  ((__u64)fd_file(pfdt, fd) == fraw || (scan && fdt_holds((__u64)pfdt, fraw)));
	__u32 slot = parent_has ? CLOSE_SLOT_INHERITED : CLOSE_SLOT_OWN;

	struct close_rec rec = {
		.ts_ns = e->ts_ns,
		.pid = e->pid,
		.ppid = e->ppid,
		.fd = fd,
		.refs = refs,
		.write_seq = e->write_seq,
		.copied_seq = e->copied_seq,
		.op = op,
		.ino = (__u32)e->ino,
	};
	__builtin_memcpy(rec.comm, e->comm, sizeof(rec.comm));
	// The key is built on the stack: 6.1's verifier refuses ring-buffer
	// memory as a map key.
	struct close_key key = { .cookie = e->cookie, .slot = slot };
	if (key.cookie && !(parent_has && op == CLOSE_OP_EXIT))
		bpf_map_update_elem(&closes, &key, &rec, BPF_ANY);
	submit(e);
}

// on_close and on_dup are the close, dup2 and dup3 hooks. Each comes three
// times: with direct loads (bpf_rdonly_cast, 6.2+); *_probe, with probe
// reads, for 5.17 to 6.1; and *_noloop, for kernels before 5.17, which
// also leave out fdt_holds' bpf_loop (a kernel without it refuses the
// program even where the call is dead code, for the callback's
// pseudo-function load), so a copy counts as inherited there only when the
// parent has it at the same fd.
static __always_inline int on_close(struct trace_event_raw_sys_enter *ctx, bool scan, bool fast)
{
	__u64 fdt, fraw;
	struct file *f;
	struct sock *sk = fd_sock(ctx->args[0], &f, &fraw, &fdt, fast);
	on_fd_close((struct fdtable *)fdt, f, fraw, sk, ctx->args[0], CLOSE_OP_CLOSE, scan, fast);
	return 0;
}

// dup2/dup3 close newfd when it is open and differs from oldfd.
static __always_inline int on_dup(struct trace_event_raw_sys_enter *ctx, __u8 op, bool scan, bool fast)
{
	if (ctx->args[0] == ctx->args[1])
		return 0;
	__u64 fdt, fraw;
	struct file *f;
	struct sock *sk = fd_sock(ctx->args[1], &f, &fraw, &fdt, fast);
	on_fd_close((struct fdtable *)fdt, f, fraw, sk, ctx->args[1], op, scan, fast);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close(struct trace_event_raw_sys_enter *ctx) { return on_close(ctx, true, true); }

SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close_probe(struct trace_event_raw_sys_enter *ctx) { return on_close(ctx, true, false); }

SEC("tracepoint/syscalls/sys_enter_close")
int sys_enter_close_noloop(struct trace_event_raw_sys_enter *ctx) { return on_close(ctx, false, false); }

SEC("tracepoint/syscalls/sys_enter_dup2")
int sys_enter_dup2(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP2, true, true); }

SEC("tracepoint/syscalls/sys_enter_dup2")
int sys_enter_dup2_probe(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP2, true, false); }

SEC("tracepoint/syscalls/sys_enter_dup2")
int sys_enter_dup2_noloop(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP2, false, false); }

SEC("tracepoint/syscalls/sys_enter_dup3")
int sys_enter_dup3(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP3, true, true); }

SEC("tracepoint/syscalls/sys_enter_dup3")
int sys_enter_dup3_probe(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP3, true, false); }

SEC("tracepoint/syscalls/sys_enter_dup3")
int sys_enter_dup3_noloop(struct trace_event_raw_sys_enter *ctx) { return on_dup(ctx, CLOSE_OP_DUP3, false, false); }

// close_fd and close_fd_cast are on_fd_close as global functions, which
// the verifier checks once, on their own: the bit callbacks call them
// instead of inlining them (that grew past the verifier's limit). fdt is
// the fd table's kernel address and fraw the file's; close_fd reads with
// probe reads, close_fd_cast with direct loads (6.2+).
__noinline int close_fd(__u64 fdt, __u32 fd, __u32 op)
{
	struct file *f = fd_file((struct fdtable *)fdt, fd);
	on_fd_close((struct fdtable *)fdt, f, (__u64)f, tcp_sock_of(f), fd, op, true, false);
	return 0;
}

__noinline int close_fd_cast(__u64 fdt, __u64 fraw, __u32 fd, __u32 op)
{
	struct file *f = KCAST(fraw, struct file);
	on_fd_close((struct fdtable *)fdt, f, fraw, tcp_sock_of_cast(f), fd, op, true, true);
	return 0;
}

// close_fd_fast is close_fd_cast behind an inline check that the fd is a
// socket at all: a non-socket costs three loads and no call.
static __always_inline void close_fd_fast(__u64 fdt, __u64 fds, __u32 fd, __u32 op)
{
	__u64 fraw = KWORD(fds + (__u64)fd * sizeof(struct file *));
	struct file *f = KCAST(fraw, struct file);
	if (!fraw || (__u64)f->f_op->release != sock_close_fn)
		return;
	close_fd_cast(fdt, fraw, fd, op);
}

struct range_ctx {
	__u64 fdt;
	__u64 fds;      // the table's array of files
	__u64 open_fds; // the table's bitmap of open fds
	__u32 base;     // first word of the bitmap to visit
	__u32 first;
	__u32 last;
	__u8 op; // CLOSE_OP_CLOSE_RANGE or CLOSE_OP_EXIT
};

struct word_ctx {
	__u64 fdt;
	__u64 fds;
	__u64 word; // the open fds of the word still to visit, in [first, last]
	__u32 fd0;  // fd of the word's bit 0
	__u8 op;
};

// popcount64 and bit_index count the set bits of a word and find the one
// bit of a power of two, in a few ALU instructions (BPF has neither).
static __always_inline __u32 popcount64(__u64 x)
{
	x = x - ((x >> 1) & 0x5555555555555555ULL);
	x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
	x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
	return (x * 0x0101010101010101ULL) >> 56;
}

static __always_inline __u32 bit_index(__u64 b)
{
	__u32 n = 0;
	if (b >> 32) { n += 32; b >>= 32; }
	if (b >> 16) { n += 16; b >>= 16; }
	if (b >> 8) { n += 8; b >>= 8; }
	if (b >> 4) { n += 4; b >>= 4; }
	if (b >> 2) { n += 2; b >>= 2; }
	if (b >> 1) n += 1;
	return n;
}

// range_word is the open fds of bitmap word i that lie in [first, last],
// or 0; *past says the word ends at or beyond last (the walk stops).
static __always_inline __u64 range_word(__u64 word, __u32 i, __u32 first, __u32 last, bool *past)
{
	__u32 fd0 = i * 64;
	*past = fd0 + 63 >= last;
	if (fd0 > last)
		return 0;
	if (last - fd0 < 63)
		word &= ~0ULL >> (63 - (last - fd0));
	if (first > fd0) {
		if (first - fd0 > 63)
			return 0;
		word &= ~0ULL << (first - fd0);
	}
	return word;
}

// RANGE_CALLBACKS defines the bpf_loop callbacks of close_range and process
// exit: one call per open fd in the range (bpf_loop over the set bits of
// a word, each call taking the lowest), and one per 64 fds of the bitmap,
// so empty stretches of the table cost one load per 64 fds. FAST picks
// direct loads (the _cast callbacks) or probe reads.
#define RANGE_CALLBACKS(SFX, FAST, CLOSE_FD)                                                          \
	static long close_range_bit##SFX(__u32 n, struct word_ctx *w)                                  \
	{                                                                                              \
		__u64 low = w->word & -w->word;                                                        \
		if (!low)                                                                              \
			return 1;                                                                      \
		w->word ^= low;                                                                        \
		CLOSE_FD(w->fdt, w->fds, w->fd0 + bit_index(low), w->op);                              \
		return 0;                                                                              \
	}                                                                                              \
	static long close_range_word##SFX(__u32 n, struct range_ctx *c)                                \
	{                                                                                              \
		__u32 i = c->base + n;                                                                 \
		__u64 word = 0;                                                                        \
		if (FAST)                                                                              \
			word = KWORD(c->open_fds + (__u64)i * 8);                                     \
		else                                                                                   \
			bpf_probe_read_kernel(&word, sizeof(word), (void *)(c->open_fds + (__u64)i * 8)); \
		bool past;                                                                             \
		struct word_ctx w = {                                                                  \
			.fdt = c->fdt,                                                                 \
			.fds = c->fds,                                                                 \
			.word = range_word(word, i, c->first, c->last, &past),                         \
			.fd0 = i * 64,                                                                 \
			.op = c->op,                                                                   \
		};                                                                                     \
		if (w.word)                                                                            \
			bpf_loop(popcount64(w.word), close_range_bit##SFX, &w, 0);                     \
		/* The mask tells the verifier the callback returns 0 or 1. */                        \
		return past & 1;                                                                       \
	}

// close_fd_probe drops fds, which close_fd reads through fdt itself.
#define close_fd_probe(fdt, fds, fd, op) close_fd(fdt, fd, op)
RANGE_CALLBACKS(, false, close_fd_probe)
RANGE_CALLBACKS(_cast, true, close_fd_fast)

// range_walk visits the open fds in [first, last] of the current task's fd
// table, as a close of each. fast picks direct loads and the _cast
// callbacks.
static __always_inline void range_walk(__u32 first, __u32 last, __u8 op, bool fast)
{
	struct range_ctx c = {.first = first, .op = op};
	__u32 max;
	if (fast) {
		// As numbers: the callbacks hand them to a global function.
		c.fdt = KWORD(&bpf_get_current_task_btf()->files->fdt);
		c.fds = KWORD(c.fdt + bpf_core_field_offset(struct fdtable, fd));
		c.open_fds = KWORD(c.fdt + bpf_core_field_offset(struct fdtable, open_fds));
		max = KCAST(c.fdt, struct fdtable)->max_fds;
	} else {
		// CO-RE reads take plain locals: a field of the local range_ctx
		// inside BPF_CORE_READ would be relocated against kernel types
		// and fail.
		struct fdtable *t = current_fdtable();
		max = BPF_CORE_READ(t, max_fds);
		c.fdt = (__u64)t;
		c.fds = (__u64)BPF_CORE_READ(t, fd);
		c.open_fds = (__u64)BPF_CORE_READ(t, open_fds);
	}
	if (!max || first >= max)
		return;
	if (last >= max)
		last = max - 1;
	c.last = last;
	c.base = first / 64;
	__u32 words = last / 64 + 1 - c.base;
	if (words > 1 << 16)
		words = 1 << 16;
	if (fast)
		bpf_loop(words, close_range_word_cast, &c, 0);
	else
		bpf_loop(words, close_range_word, &c, 0);
}

static __always_inline int on_close_range(struct trace_event_raw_sys_enter *ctx, bool fast)
{
	if (ctx->args[2] & CLOSE_RANGE_CLOEXEC)
		return 0;
	range_walk(ctx->args[0], ctx->args[1], CLOSE_OP_CLOSE_RANGE, fast);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close_range")
int sys_enter_close_range(struct trace_event_raw_sys_enter *ctx) { return on_close_range(ctx, true); }

SEC("tracepoint/syscalls/sys_enter_close_range")
int sys_enter_close_range_probe(struct trace_event_raw_sys_enter *ctx) { return on_close_range(ctx, false); }

// sched_process_exit fires for every exiting thread before exit_files.
// When the thread is the last user of its fd table, exit closes every fd
// in it without a close call: each TCP socket fd that leaves references
// behind is recorded as a close with op exit. A thread whose fd table
// others still share leaves after two reads; every exiting process (the
// last user of its table) walks the open-fd bitmap, one read per 64 fds,
// and checks each open fd as a close does.
static __always_inline int on_exit(bool fast)
{
	if (fast) {
		struct files_struct *files = bpf_get_current_task_btf()->files;
		if (!files || files->count.counter != 1)
			return 0;
	} else {
		struct files_struct *files = BPF_CORE_READ(current_task(), files);
		if (!files || BPF_CORE_READ(files, count.counter) != 1)
			return 0;
	}
	range_walk(0, ~0U, CLOSE_OP_EXIT, fast);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p) { return on_exit(true); }

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit_probe, struct task_struct *p) { return on_exit(false); }

// fold_sockopt keeps the option in the socket's delta. A socket with no
// cookie yet (set before connect or listen) is skipped: its delta at
// ESTABLISHED reads the settings from the socket.
static __always_inline void fold_sockopt(struct sock *sk, int level, int optname, void *uval, bool fast)
{
	__u64 cookie = fast ? stored_id_cast(sk) : stored_id(sk);
	if (!cookie)
		return;
	__s32 val = 0;
	bpf_probe_read_user(&val, sizeof(val), uval);
	__u64 now = bpf_ktime_get_ns();
	struct sys_delta d;
	bool existed = sys_load(cookie, &d, now);
	if (level == SOL_SOCKET) {
		d.opt_keepalive = val;
		d.opt_mask |= SOCKOPT_KEEPALIVE;
	} else if (optname == TCP_KEEPIDLE) {
		d.opt_keep_idle = val;
		d.opt_mask |= SOCKOPT_KEEPIDLE;
	} else if (optname == TCP_KEEPINTVL) {
		d.opt_keep_intvl = val;
		d.opt_mask |= SOCKOPT_KEEPINTVL;
	} else if (optname == TCP_KEEPCNT) {
		d.opt_keep_cnt = val;
		d.opt_mask |= SOCKOPT_KEEPCNT;
	} else {
		d.opt_user_timeout_ms = val;
		d.opt_mask |= SOCKOPT_USER_TIMEOUT;
	}
	d.parts |= DELTA_SOCKOPT;
	d.opt_pid = bpf_get_current_pid_tgid() >> 32;
	d.opt_ns = now;
	// The state read here announces a connection the agent does not know
	// yet; the state hook's own delta (in deltas) moves a known one.
	if (fast) {
		d.state = sk->__sk_common.skc_state;
		if (!d.tuple.family)
			fill_tuple_btf(&d.tuple, sk);
	} else {
		d.state = BPF_CORE_READ(sk, __sk_common.skc_state);
		if (!d.tuple.family)
			fill_tuple(&d.tuple, sk);
	}
	delta_store(&sys_deltas, cookie, &d, existed);
	count(STAT_FOLDED_SOCKOPT);
}

// setsockopt is only interesting for the keepalive and give-up settings; the
// level/optname compare rejects everything else before any memory read.
// fast picks direct loads (6.2+) over probe reads.
static __always_inline int on_setsockopt(struct trace_event_raw_sys_enter *ctx, bool fast)
{
	int level = ctx->args[1], optname = ctx->args[2];
	if (level == SOL_SOCKET) {
		if (optname != SO_KEEPALIVE)
			return 0;
	} else if (level == SOL_TCP) {
		if (optname != TCP_KEEPIDLE && optname != TCP_KEEPINTVL && optname != TCP_KEEPCNT &&
		    optname != TCP_USER_TIMEOUT)
			return 0;
	} else {
		return 0;
	}
	__u32 fd = ctx->args[0];
	__u64 fdt, fraw;
	struct file *f;
	struct sock *sk = fd_sock(fd, &f, &fraw, &fdt, fast);
	if (!sk)
		return 0;
	if (!watching()) {
		fold_sockopt(sk, level, optname, (void *)ctx->args[3], fast);
		return 0;
	}
	struct event *e = reserve(STAT_LOST_SOCKOPT);
	if (!e)
		return 0;
	e->type = EVENT_SOCKOPT;
	e->fd = fd;
	e->level = level;
	e->optname = optname;
	bpf_probe_read_user(&e->optval, sizeof(e->optval), (void *)ctx->args[3]);
	e->cookie = stored_id(sk);
	e->ino = BPF_CORE_READ(f, f_inode, i_ino);
	e->state = BPF_CORE_READ(sk, __sk_common.skc_state);
	fill_tuple(&e->tuple, sk);
	set_task(e);
	submit(e);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_setsockopt")
int sys_enter_setsockopt(struct trace_event_raw_sys_enter *ctx) { return on_setsockopt(ctx, true); }

SEC("tracepoint/syscalls/sys_enter_setsockopt")
int sys_enter_setsockopt_probe(struct trace_event_raw_sys_enter *ctx) { return on_setsockopt(ctx, false); }

// on_owner writes into the socket's delta that the current process has fd,
// when it is a TCP socket that already has a cookie (the state hook gives
// every socket one at SYN_SENT or SYN_RECV; a socket without one is left to
// the next holder walk). The delta names the process as the holder walk
// does: its tgid, its parent's and its thread group leader's comm. It also
// carries the tuple and state, so that it announces a connection whose
// handshake the kernel folded (a non-blocking connect returns in SYN_SENT).
static __always_inline void on_owner(__u32 fd, __u8 op, bool fast)
{
	__u64 fdt, fraw;
	struct file *f;
	struct sock *sk = fd_sock(fd, &f, &fraw, &fdt, fast);
	if (!sk)
		return;
	__u64 cookie = fast ? stored_id_cast(sk) : stored_id(sk);
	if (!cookie)
		return;
	__u64 now = bpf_ktime_get_ns();
	struct sys_delta d;
	bool existed = sys_load(cookie, &d, now);
	d.parts |= DELTA_OWNER;
	d.owner_ns = now;
	d.owner_op = op;
	d.owner_fd = fd;
	d.owner_pid = bpf_get_current_pid_tgid() >> 32;
	if (fast) {
		struct task_struct *task = bpf_get_current_task_btf();
		d.ino = f->f_inode->i_ino;
		d.state = sk->__sk_common.skc_state;
		fill_tuple_btf(&d.tuple, sk);
		d.owner_ppid = task->real_parent->tgid;
		// comm is NUL-padded (__set_task_comm pads it).
		__builtin_memcpy(d.owner_comm, task->group_leader->comm, sizeof(d.owner_comm));
	} else {
		struct task_struct *task = current_task();
		d.ino = BPF_CORE_READ(f, f_inode, i_ino);
		d.state = BPF_CORE_READ(sk, __sk_common.skc_state);
		fill_tuple(&d.tuple, sk);
		d.owner_ppid = BPF_CORE_READ(task, real_parent, tgid);
		BPF_CORE_READ_STR_INTO(&d.owner_comm, task, group_leader, comm);
	}
	delta_store(&sys_deltas, cookie, &d, existed);
	count(STAT_FOLDED_OWNER);
}

// sys_enter_connect remembers the fd of a connect to an IPv4 or IPv6
// address for sys_exit_connect; any other connect (a unix socket's, most
// often) costs one read of the address family.
SEC("tracepoint/syscalls/sys_enter_connect")
int sys_enter_connect(struct trace_event_raw_sys_enter *ctx)
{
	__u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), (void *)ctx->args[1]) ||
	    (family != AF_INET && family != AF_INET6))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u32 fd = ctx->args[0];
	bpf_map_update_elem(&connect_fds, &id, &fd, BPF_ANY);
	return 0;
}

// The syscall's first argument in the registers it saved on entry: on arm64
// x0 holds the return value by the exit tracepoint, orig_x0 the argument.
struct pt_regs___gc_x86 {
	unsigned long di;
} __attribute__((preserve_access_index));
struct pt_regs___gc_arm64 {
	__u64 orig_x0;
} __attribute__((preserve_access_index));

// syscall_arg0 is the current syscall's first argument, read at its exit
// from the task's saved registers (bpf_task_pt_regs, 5.15+).
static __always_inline __u64 syscall_arg0(void)
{
	void *regs = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());
#if defined(__TARGET_ARCH_arm64)
	return ((struct pt_regs___gc_arm64 *)regs)->orig_x0;
#elif defined(__TARGET_ARCH_x86)
	return ((struct pt_regs___gc_x86 *)regs)->di;
#else
#error "syscall_arg0: unknown target architecture"
#endif
}

// sys_exit_connect reports the owner of a socket whose connect succeeded or
// is in progress (a non-blocking connect). fast takes the fd from the
// task's saved registers and reads with direct loads (6.2+), so no
// sys_enter_connect runs; the probe-read variant finds the fd that
// sys_enter_connect kept.
static __always_inline int on_exit_connect(struct trace_event_raw_sys_exit *ctx, bool fast)
{
	if (fast) {
		if (ctx->ret != 0 && ctx->ret != -EINPROGRESS)
			return 0;
		on_owner(syscall_arg0(), OWNER_OP_CONNECT, true);
		return 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	__u32 *fdp = bpf_map_lookup_elem(&connect_fds, &id);
	if (!fdp)
		return 0;
	__u32 fd = *fdp;
	bpf_map_delete_elem(&connect_fds, &id);
	if (ctx->ret != 0 && ctx->ret != -EINPROGRESS)
		return 0;
	on_owner(fd, OWNER_OP_CONNECT, fast);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect(struct trace_event_raw_sys_exit *ctx) { return on_exit_connect(ctx, true); }

SEC("tracepoint/syscalls/sys_exit_connect")
int sys_exit_connect_probe(struct trace_event_raw_sys_exit *ctx) { return on_exit_connect(ctx, false); }

// sys_exit_accept and sys_exit_accept4 report the owner of an accepted
// socket: the return value is its fd.
static __always_inline int on_exit_accept(struct trace_event_raw_sys_exit *ctx, bool fast)
{
	if (ctx->ret < 0)
		return 0;
	on_owner(ctx->ret, OWNER_OP_ACCEPT, fast);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept(struct trace_event_raw_sys_exit *ctx) { return on_exit_accept(ctx, true); }

SEC("tracepoint/syscalls/sys_exit_accept")
int sys_exit_accept_probe(struct trace_event_raw_sys_exit *ctx) { return on_exit_accept(ctx, false); }

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4(struct trace_event_raw_sys_exit *ctx) { return on_exit_accept(ctx, true); }

SEC("tracepoint/syscalls/sys_exit_accept4")
int sys_exit_accept4_probe(struct trace_event_raw_sys_exit *ctx) { return on_exit_accept(ctx, false); }

// sock_rec is one socket of the iter/tcp snapshot. Times are ages in jiffies
// at the moment the record was written; the collector converts them.
struct sock_rec {
	__u64 cookie;
	__u64 ino;
	__u64 bytes_sent;
	__u64 bytes_received;
	__u32 netns;
	__u32 uid;
	__u8 family;
	__u8 state;
	__u8 full; // 0 for time-wait and request sockets: only the tuple is valid
	__u8 pad0;
	__u16 sport;
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	struct tcp_part tcp; // settings and counters, when full
	__u32 net_ka_time;   // the socket's netns sysctls, in jiffies
	__u32 net_ka_intvl;
	__u32 net_ka_probes;
	__u32 net_retries2;
	__u32 send_age_jiffies; // since the last data sent
	__u32 recv_age_jiffies; // since the last data received
	__u32 retrans_age_ms;   // since the first retransmit of the current timeout, if any
	__u32 send_queue;       // bytes written but not yet acknowledged
	__u32 recv_queue;       // bytes received but not yet read
	__u16 sk_err;
	__u16 pad1;
	__u32 write_seq;
	__u32 copied_seq;
	__u32 pad;
};

const struct sock_rec *unused_sock_rec __attribute__((unused));

static __always_inline void rec_tuple(struct sock_rec *r, struct sock_common *skc)
{
	r->family = skc->skc_family;
	r->state = skc->skc_state;
	r->sport = skc->skc_num;
	r->dport = __builtin_bswap16(skc->skc_dport);
	r->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
	read_addrs(r->family, r->saddr, r->daddr, skc);
}

// retrans_age_ms is how long ago the current run of retransmissions began.
// retrans_stamp is on the TCP clock (CLOCK_MONOTONIC): milliseconds, or
// microseconds on sockets with tcp_usec_ts (6.7+), not jiffies.
static __always_inline __u32 retrans_age_ms(struct tcp_sock *tp)
{
	__u32 stamp = tp->retrans_stamp;
	if (!stamp)
		return 0;
	__u64 now_us = bpf_ktime_get_ns() / 1000;
	if (bpf_core_field_exists(struct tcp_sock, tcp_usec_ts) && BPF_CORE_READ_BITFIELD(tp, tcp_usec_ts))
		return ((__u32)now_us - stamp) / 1000;
	return (__u32)(now_us / 1000) - stamp;
}

// iter_tcp writes one sock_rec per TCP socket in the network namespace of
// the process that opens the iterator. The socket is a BTF pointer, so its
// fields are plain loads: the probe reads they were cost about a
// microsecond a socket, most of a snapshot's kernel time.
SEC("iter/tcp")
int iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct sock_rec r = {};
	r.cookie = SOCK_ID(skc);
	r.uid = ctx->uid;
	rec_tuple(&r, skc);

	struct tcp_sock *tp = bpf_skc_to_tcp_sock(skc);
	if (tp) {
		struct sock *sk = (struct sock *)tp;
		r.full = 1;
		struct socket *so = sk->sk_socket;
		if (so && so->file)
			r.ino = so->file->f_inode->i_ino;
		fill_tcp_btf(&r.tcp, sk);

		struct net *net = sk->__sk_common.skc_net.net;
		r.net_ka_time = BPF_CORE_READ_BITFIELD(net, ipv4.sysctl_tcp_keepalive_time);
		r.net_ka_intvl = BPF_CORE_READ_BITFIELD(net, ipv4.sysctl_tcp_keepalive_intvl);
		r.net_ka_probes = BPF_CORE_READ_BITFIELD(net, ipv4.sysctl_tcp_keepalive_probes);
		r.net_retries2 = BPF_CORE_READ_BITFIELD(net, ipv4.sysctl_tcp_retries2);

		__u32 now = (__u32)bpf_jiffies64();
		r.send_age_jiffies = now - tp->lsndtime;
		r.recv_age_jiffies = now - tp->inet_conn.icsk_ack.lrcvtime;
		r.retrans_age_ms = retrans_age_ms(tp);
		r.write_seq = tp->write_seq;
		r.copied_seq = tp->copied_seq;
		r.send_queue = r.write_seq - tp->snd_una;
		r.recv_queue = tp->rcv_nxt - r.copied_seq;
		r.bytes_sent = tp->bytes_sent;
		r.bytes_received = tp->bytes_received;
		r.sk_err = sk->sk_err;
	}
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

// holder_rec is one (process, fd) that refers to a TCP socket.
struct holder_rec {
	__u64 cookie; // 0 if the socket has not been given a cookie yet
	__u64 ino;
	__u32 pid; // tgid
	__u32 ppid;
	__u32 fd;
	__u32 netns;
	__u32 refs; // references to the file
	__u32 pad;
	__u64 cgroup_id; // the task's cgroup v2 id (the cgroup directory's inode)
	char comm[16];
};

const struct holder_rec *unused_holder_rec __attribute__((unused));

// fd_cloexec reports whether task's fd is marked close-on-exec.
static __always_inline bool fd_cloexec(struct task_struct *task, __u32 fd)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	unsigned long *bits = BPF_CORE_READ(fdt, close_on_exec);
	unsigned long word = 0;
	bpf_probe_read_kernel(&word, sizeof(word), &bits[fd / 64]);
	return word & (1UL << (fd % 64));
}

// iter_task_file writes one holder_rec per fd, in any process on the host,
// that refers to a TCP socket.
SEC("iter/task_file")
int iter_task_file(struct bpf_iter__task_file *ctx)
{
	struct file *f = ctx->file;
	struct task_struct *task = ctx->task;
	if (!f || !task)
		return 0;
	// A vfork child between clone and exec (Go's os/exec, posix_spawn)
	// has its parent's fds only until its exec closes the close-on-exec
	// ones: it is not a holder. What it keeps past exec, the next walk
	// finds.
	if (task->vfork_done)
		return 0;
	// Every fd on the host comes here: a non-socket leaves after plain
	// loads (task and file are BTF pointers), before any probe read.
	if ((__u64)f->f_op->release != sock_close_fn)
		return 0;
	struct sock *sk = tcp_sock_of(f);
	if (!sk)
		return 0;
	// A task in the middle of an exec (whose vfork parent it has already
	// released) still has the close-on-exec fds that its exec is about to
	// close: they are not held (seen under TCG: a Go test's child, its comm
	// not yet the new program's, listed as a holder until the next walk).
	if (BPF_CORE_READ_BITFIELD(task, in_execve) && fd_cloexec(task, ctx->fd))
		return 0;
	struct holder_rec r = {};
	r.cookie = stored_id(sk);
	r.ino = f->f_inode->i_ino;
	r.pid = task->tgid;
	r.ppid = task->real_parent->tgid;
	r.fd = ctx->fd;
	r.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	r.refs = file_ref_count(f);
	r.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&r.comm, task, comm);
	bpf_seq_write(ctx->meta->seq, &r, sizeof(r));
	return 0;
}

// act_req is one socket the agent asked an action iterator to act on, and
// what the iterator found and did.
struct act_req {
	__s32 result; // the kernel's answer, 0 or a negative errno, once seen
	__u8 seen;    // 1 once the iterator met the socket
	__u8 state;   // the socket's state then
	__u8 full;    // 1 for a full socket (not a request or TIME_WAIT one)
	__u8 pad;
	// For iter_keepalive: the options to set (enum sockopt_bit), and
	// which one the kernel refused (result).
	__u32 mask;
	__u32 failed; // enum sockopt_bit
	__s32 keep_idle;  // seconds
	__s32 keep_intvl; // seconds
	__s32 keep_cnt;
	__s32 user_timeout_ms;
};

// act_targets holds the sockets, by cookie, that the next action iterator
// acts on: the exact sockets, never an address or port. Writer: the agent,
// before it opens the iterator, and the iterator, which records in each
// entry what it found and did. Reader and deleter: the agent, once the
// iterator has run (an action holds the agent's action lock throughout).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); // socket cookie
	__type(value, struct act_req);
} act_targets SEC(".maps");

const struct act_req *unused_act_req __attribute__((unused));

// act_target returns the act_targets entry of the socket an action
// iterator met, marked seen with the state it is in, or NULL when the
// agent did not ask for it.
static __always_inline struct act_req *act_target(struct sock_common *skc)
{
	if (!skc)
		return NULL;
	__u64 cookie = SOCK_ID(skc);
	struct act_req *req = bpf_map_lookup_elem(&act_targets, &cookie);
	if (!req)
		return NULL;
	req->seen = 1;
	req->state = skc->skc_state;
	return req;
}

// act_full marks whether the socket is a full one (a request or TIME_WAIT
// socket cannot be acted on: refused with EOPNOTSUPP).
static __always_inline bool act_full(struct sock_common *skc, struct act_req *req)
{
	if (!bpf_skc_to_tcp_sock(skc)) {
		req->result = -EOPNOTSUPP;
		return false;
	}
	req->full = 1;
	return true;
}

// bpf_sock_destroy aborts a socket as sock_diag's SOCK_DESTROY does (6.5+;
// only iter/tcp and iter/udp programs may call it). A kernel without it
// refuses to load iter_destroy alone; the agent then destroys through
// sock_diag.
extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

// iter_destroy aborts each socket of act_targets that it meets in the
// network namespace of the process that opens it: the peer gets a RST and
// the holder ECONNABORTED. Only full sockets in a state the agent allows
// are destroyed; the agent checked the state, and the iterator records the
// one it sees.
SEC("iter/tcp")
int iter_destroy(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct act_req *req = act_target(skc);
	if (!req || !act_full(skc, req))
		return 0;
	req->result = bpf_sock_destroy(skc);
	return 0;
}

// set_opt sets one option with bpf_setsockopt and records a refusal.
static __always_inline bool set_opt(struct sock *sk, struct act_req *req, __u32 bit, int level, int name, __s32 val)
{
	if (!(req->mask & bit))
		return true;
	long err = bpf_setsockopt(sk, level, name, &val, sizeof(val));
	if (err) {
		req->result = err;
		req->failed = bit;
		return false;
	}
	return true;
}

// iter_keepalive arms TCP keepalive (and optionally TCP_USER_TIMEOUT) on
// each socket of act_targets that it meets in the network namespace of
// the process that opens it, with bpf_setsockopt as the application's own
// setsockopt would: its getsockopt sees the new values.
SEC("iter/tcp")
int iter_keepalive(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct act_req *req = act_target(skc);
	if (!req || !act_full(skc, req))
		return 0;
	struct sock *sk = (struct sock *)bpf_skc_to_tcp_sock(skc);
	if (!sk)
		return 0;
	// The idle time, interval and count first: SO_KEEPALIVE arms the timer
	// with the idle time it finds.
	if (!set_opt(sk, req, SOCKOPT_KEEPIDLE, SOL_TCP, TCP_KEEPIDLE, req->keep_idle) ||
	    !set_opt(sk, req, SOCKOPT_KEEPINTVL, SOL_TCP, TCP_KEEPINTVL, req->keep_intvl) ||
	    !set_opt(sk, req, SOCKOPT_KEEPCNT, SOL_TCP, TCP_KEEPCNT, req->keep_cnt) ||
	    !set_opt(sk, req, SOCKOPT_USER_TIMEOUT, SOL_TCP, TCP_USER_TIMEOUT, req->user_timeout_ms) ||
	    !set_opt(sk, req, SOCKOPT_KEEPALIVE, SOL_SOCKET, SO_KEEPALIVE, 1))
		return 0;
	req->result = 0;
	return 0;
}
