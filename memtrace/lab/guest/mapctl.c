// mapctl: the lab guest's BPF map tool. Raw bpf(2) syscalls, built static by the host's gcc
// so the guest needs no libbpf. Every command prints one line per result on stdout and
// exits non-zero with a one-line message on stderr on failure.
//
//   mapctl create TYPE PIN key=K value=V entries=N [flags=F] [name=S] [inner=PIN]
//   mapctl fill PIN COUNT [START]      insert or update keys START..START+COUNT-1
//   mapctl delete PIN COUNT [START]
//   mapctl id PIN                      print the map id
//   mapctl fdinfo                      every map: "@@map ID" then its /proc/self/fdinfo text
//   mapctl outer-set OUTER KEY INNER   hash/array-of-maps: OUTER[KEY] = INNER
//   mapctl clone SRC PIN               new map with SRC's shape, all SRC entries copied
// Any PIN argument may also be id:N, a map by id.
//   mapctl inner-id OUTER KEY          id of the inner map at OUTER[KEY]
//   mapctl sockhash-fill PIN COUNT READYFILE
//                                      COUNT UDP sockets into a sockhash (GFP_ATOMIC charges
//                                      to the map's memcg); touches READYFILE, then waits for
//                                      SIGTERM while holding the sockets
//   mapctl sk-storage-fill PIN COUNT READYFILE
//                                      COUNT new UDP sockets, each given an element of the
//                                      sk_storage map PIN (key = the socket's fd; the kernel
//                                      allocates it with GFP_ATOMIC, charged to the map's
//                                      memcg); touches READYFILE, then holds the sockets (and
//                                      so the elements) until SIGTERM
//   mapctl task-storage-fill PIN COUNT READYFILE
//                                      forks COUNT children that only pause() (and die with
//                                      mapctl), gives each an element of the task_storage map
//                                      PIN (key = a pidfd_open() fd of the child); touches
//                                      READYFILE, holds them until SIGTERM, then kills and
//                                      reaps the children
//   mapctl cgrp-storage-fill PIN DIR COUNT READYFILE
//                                      makes the cgroups DIR/c0..c<COUNT-1> (DIR: a cgroup2
//                                      directory) and gives each an element of the cgrp_storage
//                                      map PIN (key = an O_RDONLY fd of the directory); touches
//                                      READYFILE, holds them until SIGTERM, then closes the fds
//                                      and removes the cgroups
//   mapctl inode-storage-fill PIN DIR COUNT READYFILE
//                                      creates the empty files DIR/f0..f<COUNT-1> (no page cache
//                                      to charge) and gives each file's inode an element of the
//                                      inode_storage map PIN (key = an O_RDONLY fd of the file);
//                                      touches READYFILE, holds them until SIGTERM, then closes
//                                      the fds and removes the files
// Every *-fill prints "id=ID done=N failed=N errno=E" (E: the first failure's errno) once
// the elements are made.
//
// The local-storage TYPEs sk_storage, inode_storage, task_storage and cgrp_storage
// (BPF_MAP_TYPE_SK_STORAGE, _INODE_STORAGE, _TASK_STORAGE, _CGRP_STORAGE) need BTF for their
// key and value: create loads a minimal BTF blob (int key, value struct { char data[V]; })
// with BPF_BTF_LOAD itself. The kernel wants key=4 entries=0 flags=1 (BPF_F_NO_PREALLOC) for
// them. cgrp_storage is new in 6.2: an older kernel refuses the map type (EINVAL), and create
// says so. inode_storage needs the BPF LSM: a kernel built without CONFIG_BPF_LSM refuses the
// type (EINVAL), and one whose BPF LSM was not initialized at boot (bpf not in lsm=) refuses
// to create the map (EOPNOTSUPP; inode_storage_map_alloc's bpf_lsm_initialized check, in the
// 6.1 and 6.12 stable kernels); create says so for both.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// not in every libc's linux/bpf.h: the values of the kernel's enum bpf_map_type
#define MT_MAP_TYPE_INODE_STORAGE 28
#define MT_MAP_TYPE_TASK_STORAGE 29
#define MT_MAP_TYPE_CGRP_STORAGE 32
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif

static const char *prog = "mapctl";

static void die(const char *fmt, const char *arg) {
	fprintf(stderr, "%s: ", prog);
	fprintf(stderr, fmt, arg);
	if (errno)
		fprintf(stderr, ": %s", strerror(errno));
	fputc('\n', stderr);
	exit(1);
}

static long sys_bpf(int cmd, union bpf_attr *attr) {
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static const struct {
	const char *name;
	int type;
} types[] = {
	{"hash", BPF_MAP_TYPE_HASH},
	{"array", BPF_MAP_TYPE_ARRAY},
	{"percpu_hash", BPF_MAP_TYPE_PERCPU_HASH},
	{"percpu_array", BPF_MAP_TYPE_PERCPU_ARRAY},
	{"lru_hash", BPF_MAP_TYPE_LRU_HASH},
	{"lru_percpu_hash", BPF_MAP_TYPE_LRU_PERCPU_HASH},
	{"lpm_trie", BPF_MAP_TYPE_LPM_TRIE},
	{"array_of_maps", BPF_MAP_TYPE_ARRAY_OF_MAPS},
	{"hash_of_maps", BPF_MAP_TYPE_HASH_OF_MAPS},
	{"ringbuf", BPF_MAP_TYPE_RINGBUF},
	{"sockhash", BPF_MAP_TYPE_SOCKHASH},
	{"queue", BPF_MAP_TYPE_QUEUE},
	{"stack", BPF_MAP_TYPE_STACK},
	{"sk_storage", BPF_MAP_TYPE_SK_STORAGE},
	{"inode_storage", MT_MAP_TYPE_INODE_STORAGE},
	{"task_storage", MT_MAP_TYPE_TASK_STORAGE},
	{"cgrp_storage", MT_MAP_TYPE_CGRP_STORAGE},
};

static int is_local_storage(int type) {
	return type == BPF_MAP_TYPE_SK_STORAGE || type == MT_MAP_TYPE_INODE_STORAGE ||
	       type == MT_MAP_TYPE_TASK_STORAGE || type == MT_MAP_TYPE_CGRP_STORAGE;
}

static int map_by_id(uint32_t id);

// PIN is a bpffs path, or id:N for a map by id
static int obj_get(const char *pin) {
	union bpf_attr a;
	if (!strncmp(pin, "id:", 3)) {
		int fd = map_by_id(strtoul(pin + 3, 0, 0));
		if (fd < 0)
			die("no map %s", pin);
		return fd;
	}
	memset(&a, 0, sizeof(a));
	a.pathname = (uint64_t)(unsigned long)pin;
	int fd = sys_bpf(BPF_OBJ_GET, &a);
	if (fd < 0)
		die("cannot open pinned map %s", pin);
	return fd;
}

static void obj_pin(int fd, const char *pin) {
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.pathname = (uint64_t)(unsigned long)pin;
	a.bpf_fd = fd;
	if (sys_bpf(BPF_OBJ_PIN, &a) < 0)
		die("cannot pin %s", pin);
}

static struct bpf_map_info map_info(int fd) {
	struct bpf_map_info info;
	union bpf_attr a;
	memset(&info, 0, sizeof(info));
	memset(&a, 0, sizeof(a));
	a.info.bpf_fd = fd;
	a.info.info_len = sizeof(info);
	a.info.info = (uint64_t)(unsigned long)&info;
	if (sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &a) < 0)
		die("%s", "BPF_OBJ_GET_INFO_BY_FD");
	return info;
}

static int map_by_id(uint32_t id) {
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_id = id;
	return sys_bpf(BPF_MAP_GET_FD_BY_ID, &a);
}

static int update(int fd, const void *key, const void *value, uint64_t flags) {
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_fd = fd;
	a.key = (uint64_t)(unsigned long)key;
	a.value = (uint64_t)(unsigned long)value;
	a.flags = flags;
	return sys_bpf(BPF_MAP_UPDATE_ELEM, &a);
}

static int lookup(int fd, const void *key, void *value) {
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_fd = fd;
	a.key = (uint64_t)(unsigned long)key;
	a.value = (uint64_t)(unsigned long)value;
	return sys_bpf(BPF_MAP_LOOKUP_ELEM, &a);
}

static int next_key(int fd, const void *key, void *next) {
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_fd = fd;
	a.key = (uint64_t)(unsigned long)key;
	a.next_key = (uint64_t)(unsigned long)next;
	return sys_bpf(BPF_MAP_GET_NEXT_KEY, &a);
}

static int ncpus(void) {
	// possible CPUs, as the kernel sizes per-CPU values
	FILE *f = fopen("/sys/devices/system/cpu/possible", "r");
	int lo = 0, hi = 0;
	if (f && fscanf(f, "%d-%d", &lo, &hi) < 1)
		hi = 0;
	if (f)
		fclose(f);
	return hi + 1;
}

static int is_percpu(int type) {
	return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
	       type == BPF_MAP_TYPE_LRU_PERCPU_HASH;
}

static size_t value_buf_size(const struct bpf_map_info *info) {
	if (is_percpu(info->type))
		return (size_t)((info->value_size + 7) & ~7u) * ncpus();
	return info->value_size;
}

// key i: LPM tries get {prefixlen = 8*data, data = big-endian i}; others get i in the
// first 4 bytes and a fixed pattern after.
static void make_key(const struct bpf_map_info *info, uint32_t i, unsigned char *key) {
	memset(key, 0xa5, info->key_size);
	if (info->type == BPF_MAP_TYPE_LPM_TRIE) {
		uint32_t plen = (info->key_size - 4) * 8;
		memcpy(key, &plen, 4);
		memset(key + 4, 0, info->key_size - 4);
		for (unsigned b = 0; b < 4 && b < info->key_size - 4; b++)
			key[info->key_size - 1 - b] = (i >> (8 * b)) & 0xff;
		return;
	}
	memcpy(key, &i, info->key_size < 4 ? info->key_size : 4);
}

// A minimal BTF blob: [1] int (4 bytes, signed), [2] char, [3] char[V], [4] struct
// mt_value { char data[V]; }. Local-storage maps check that the key is a 32-bit int and
// that the value type's size is value_size. Returns the BTF fd; the key is type 1, the
// value type 4.
#define MT_BTF_KEY 1
#define MT_BTF_VALUE 4
static int load_value_btf(uint32_t value_size) {
	static const char strs[] = "\0int\0char\0mt_value\0data";
	enum { S_INT = 1, S_CHAR = 5, S_VALUE = 10, S_DATA = 19 };
	uint32_t types[] = {
		// [1] INT "int": size 4, encoding SIGNED, offset 0, 32 bits
		S_INT, 1u << 24, 4, (1u << 24) | 32,
		// [2] INT "char": size 1, 8 bits
		S_CHAR, 1u << 24, 1, 8,
		// [3] ARRAY of [2], index type [1], value_size elements
		0, 3u << 24, 0, 2, 1, value_size,
		// [4] STRUCT "mt_value", size value_size, one member "data" of type [3] at bit 0
		S_VALUE, (4u << 24) | 1, value_size, S_DATA, 3, 0,
	};
	struct {
		uint16_t magic;
		uint8_t version, flags;
		uint32_t hdr_len, type_off, type_len, str_off, str_len;
	} hdr = {0xeB9F, 1, 0, 24, 0, sizeof(types), sizeof(types), sizeof(strs)};
	static unsigned char blob[sizeof(hdr) + sizeof(types) + sizeof(strs)];
	memcpy(blob, &hdr, sizeof(hdr));
	memcpy(blob + sizeof(hdr), types, sizeof(types));
	memcpy(blob + sizeof(hdr) + sizeof(types), strs, sizeof(strs));
	static char log[4096];
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.btf = (uint64_t)(unsigned long)blob;
	a.btf_size = sizeof(blob);
	a.btf_log_buf = (uint64_t)(unsigned long)log;
	a.btf_log_size = sizeof(log);
	a.btf_log_level = 1;
	int fd = sys_bpf(BPF_BTF_LOAD, &a);
	if (fd < 0) {
		for (char *p = log; *p; p++)
			if (*p == '\n')
				*p = ' ';
		die("BPF_BTF_LOAD failed (verifier log: %s)", log);
	}
	return fd;
}

static void cmd_create(int argc, char **argv) {
	if (argc < 2)
		die("%s", "usage: create TYPE PIN key=K value=V entries=N [flags=F] [name=S] [inner=PIN]");
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_type = -1;
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (!strcmp(types[i].name, argv[0]))
			a.map_type = types[i].type;
	if ((int)a.map_type < 0) {
		errno = 0;
		die("unknown map type %s", argv[0]);
	}
	const char *pin = argv[1];
	int inner_fd = -1;
	for (int i = 2; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq) {
			errno = 0;
			die("bad attribute %s", argv[i]);
		}
		*eq = 0;
		const char *k = argv[i], *v = eq + 1;
		if (!strcmp(k, "key"))
			a.key_size = strtoul(v, 0, 0);
		else if (!strcmp(k, "value"))
			a.value_size = strtoul(v, 0, 0);
		else if (!strcmp(k, "entries"))
			a.max_entries = strtoul(v, 0, 0);
		else if (!strcmp(k, "flags"))
			a.map_flags = strtoul(v, 0, 0);
		else if (!strcmp(k, "name"))
			strncpy(a.map_name, v, sizeof(a.map_name) - 1);
		else if (!strcmp(k, "inner"))
			inner_fd = obj_get(v);
		else {
			errno = 0;
			die("unknown attribute %s", k);
		}
	}
	if (inner_fd >= 0)
		a.inner_map_fd = inner_fd;
	if (is_local_storage(a.map_type)) {
		a.btf_fd = load_value_btf(a.value_size);
		a.btf_key_type_id = MT_BTF_KEY;
		a.btf_value_type_id = MT_BTF_VALUE;
	}
	int fd = sys_bpf(BPF_MAP_CREATE, &a);
	if (fd < 0 && errno == EINVAL && a.map_type == MT_MAP_TYPE_CGRP_STORAGE)
		die("cannot create map %s: this kernel has no BPF_MAP_TYPE_CGRP_STORAGE (new in 6.2)", pin);
	if (fd < 0 && (errno == EINVAL || errno == EOPNOTSUPP) && a.map_type == MT_MAP_TYPE_INODE_STORAGE)
		die("cannot create map %s: this kernel has no BPF LSM for BPF_MAP_TYPE_INODE_STORAGE "
		    "(CONFIG_BPF_LSM, and bpf in lsm=)", pin);
	if (fd < 0)
		die("cannot create map %s", pin);
	obj_pin(fd, pin);
	printf("%u\n", map_info(fd).id);
}

static void cmd_fill(int argc, char **argv, int del) {
	if (argc < 2)
		die("%s", "usage: fill|delete PIN COUNT [START]");
	int fd = obj_get(argv[0]);
	uint32_t count = strtoul(argv[1], 0, 0), start = argc > 2 ? strtoul(argv[2], 0, 0) : 0;
	struct bpf_map_info info = map_info(fd);
	unsigned char *key = calloc(1, info.key_size + 8);
	size_t vsz = value_buf_size(&info);
	unsigned char *value = calloc(1, vsz + 8);
	uint32_t done = 0, failed = 0;
	int first_errno = 0;
	for (uint32_t i = start; i < start + count; i++) {
		make_key(&info, i, key);
		for (size_t b = 0; b < vsz; b++)
			value[b] = (unsigned char)(i + b);
		int rc;
		if (del) {
			union bpf_attr a;
			memset(&a, 0, sizeof(a));
			a.map_fd = fd;
			a.key = (uint64_t)(unsigned long)key;
			rc = sys_bpf(BPF_MAP_DELETE_ELEM, &a);
		} else {
			rc = update(fd, info.type == BPF_MAP_TYPE_ARRAY || info.type == BPF_MAP_TYPE_PERCPU_ARRAY
					    ? (void *)&i : (void *)key,
				    value, BPF_ANY);
		}
		if (rc < 0) {
			if (!first_errno)
				first_errno = errno;
			failed++;
		} else {
			done++;
		}
	}
	printf("id=%u done=%u failed=%u errno=%d\n", info.id, done, failed, first_errno);
}

static void cmd_fdinfo(void) {
	union bpf_attr a;
	uint32_t id = 0;
	char path[64], buf[4096];
	for (;;) {
		memset(&a, 0, sizeof(a));
		a.start_id = id;
		if (sys_bpf(BPF_MAP_GET_NEXT_ID, &a) < 0)
			break;
		id = a.next_id;
		int fd = map_by_id(id);
		if (fd < 0)
			continue;  // freed meanwhile
		printf("@@map %u\n", id);
		snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
		int f = open(path, O_RDONLY);
		ssize_t n;
		while (f >= 0 && (n = read(f, buf, sizeof(buf))) > 0)
			fwrite(buf, 1, n, stdout);
		if (f >= 0)
			close(f);
		close(fd);
	}
}

static void cmd_outer_set(int argc, char **argv) {
	if (argc < 3)
		die("%s", "usage: outer-set OUTER KEY INNER");
	int outer = obj_get(argv[0]);
	uint32_t key = strtoul(argv[1], 0, 0);
	int inner = obj_get(argv[2]);
	uint32_t v = inner;
	if (update(outer, &key, &v, BPF_ANY) < 0)
		die("cannot set %s", argv[0]);
	printf("outer=%u key=%u inner=%u\n", map_info(outer).id, key, map_info(inner).id);
}

static void cmd_inner_id(int argc, char **argv) {
	if (argc < 2)
		die("%s", "usage: inner-id OUTER KEY");
	int outer = obj_get(argv[0]);
	uint32_t key = strtoul(argv[1], 0, 0), id = 0;
	if (lookup(outer, &key, &id) < 0)
		die("no inner map at %s", argv[1]);
	printf("%u\n", id);
}

static void cmd_clone(int argc, char **argv) {
	if (argc < 2)
		die("%s", "usage: clone SRC PIN");
	int src = obj_get(argv[0]);
	struct bpf_map_info info = map_info(src);
	union bpf_attr a;
	memset(&a, 0, sizeof(a));
	a.map_type = info.type;
	a.key_size = info.key_size;
	a.value_size = info.value_size;
	a.max_entries = info.max_entries;
	a.map_flags = info.map_flags;
	memcpy(a.map_name, info.name, sizeof(a.map_name));
	int dst = sys_bpf(BPF_MAP_CREATE, &a);
	if (dst < 0)
		die("cannot create clone of %s", argv[0]);
	unsigned char *key = calloc(1, info.key_size + 8), *next = calloc(1, info.key_size + 8);
	unsigned char *value = calloc(1, value_buf_size(&info) + 8);
	uint32_t copied = 0;
	void *prev = NULL;
	while (next_key(src, prev, next) == 0) {
		if (lookup(src, next, value) == 0) {
			if (update(dst, next, value, BPF_ANY) < 0)
				die("cannot copy into clone %s", argv[1]);
			copied++;
		}
		memcpy(key, next, info.key_size);
		prev = key;
	}
	obj_pin(dst, argv[1]);
	printf("src=%u dst=%u copied=%u\n", info.id, map_info(dst).id, copied);
}

static volatile sig_atomic_t stop;
static void on_term(int sig) { (void)sig; stop = 1; }
// the signal mask before fill_owners blocked SIGTERM (restored in forked children)
static sigset_t unblocked_mask;

// One owner per element (a socket, a task, a cgroup), made by ops->make as an fd that
// stands for it; ops->put gives owner i its element; an owner whose element failed is
// dropped at once. Prints the counts, creates READYFILE, then holds the owners (and so the
// elements) until SIGTERM, and releases them (sockets: left to exit, as ever).
struct owner_ops {
	int (*make)(uint32_t i, void *ctx);                   // the owner's fd; dies on failure
	int (*put)(int fd, uint32_t i, int owner, void *ctx);  // < 0 with errno: no element
	void (*drop)(uint32_t i, int owner, void *ctx);       // an owner without an element
	void (*release)(uint32_t i, int owner, void *ctx);    // at SIGTERM; NULL: left to exit
};

static void fill_owners(int fd, uint32_t id, uint32_t count, const char *readyfile, const struct owner_ops *ops,
			void *ctx) {
	struct rlimit rl = {count + 64, count + 64};
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		die("%s", "setrlimit(RLIMIT_NOFILE)");
	// SIGTERM stays blocked except inside sigsuspend: one arriving between the check of
	// `stop` and the wait would otherwise be slept through
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, &unblocked_mask);
	signal(SIGTERM, on_term);
	int *owners = calloc(count + 1, sizeof(int));
	uint32_t done = 0, failed = 0;
	int first_errno = 0;
	for (uint32_t i = 0; i < count; i++) {
		owners[i] = ops->make(i, ctx);
		if (ops->put(fd, i, owners[i], ctx) < 0) {
			if (!first_errno)
				first_errno = errno;
			failed++;
			ops->drop(i, owners[i], ctx);
			owners[i] = -1;
		} else {
			done++;
		}
	}
	printf("id=%u done=%u failed=%u errno=%d\n", id, done, failed, first_errno);
	fflush(stdout);
	int r = open(readyfile, O_CREAT | O_WRONLY, 0644);
	if (r >= 0)
		close(r);
	while (!stop)
		sigsuspend(&unblocked_mask);
	for (uint32_t i = 0; ops->release && i < count; i++)
		if (owners[i] >= 0)
			ops->release(i, owners[i], ctx);
}

// the map PIN for a *-fill command, which must be of map type TYPE
static int fill_map(const char *pin, int type, struct bpf_map_info *info) {
	int fd = obj_get(pin);
	*info = map_info(fd);
	if ((int)info->type != type) {
		errno = 0;
		die("%s is not of the map type this command fills", pin);
	}
	return fd;
}

struct udp_ctx {
	int bind_it;
};

static int udp_make(uint32_t i, void *ctx) {
	(void)i;
	struct udp_ctx *c = ctx;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET};
	if (s < 0 || (c->bind_it && bind(s, (struct sockaddr *)&sin, sizeof(sin)) < 0))
		die("%s", "socket/bind");
	return s;
}

static void close_owner(uint32_t i, int owner, void *ctx) {
	(void)i;
	(void)ctx;
	close(owner);
}

static int sockhash_put(int fd, uint32_t i, int sock, void *ctx) {
	(void)ctx;
	uint32_t v = sock;  // a sockhash/sockmap takes a bound socket's fd as the value
	return update(fd, &i, &v, BPF_ANY);
}

static void cmd_sockhash_fill(int argc, char **argv) {
	if (argc < 3)
		die("%s", "usage: sockhash-fill PIN COUNT READYFILE");
	int fd = obj_get(argv[0]);
	struct udp_ctx c = {1};
	const struct owner_ops ops = {udp_make, sockhash_put, close_owner, NULL};
	fill_owners(fd, map_info(fd).id, strtoul(argv[1], 0, 0), argv[2], &ops, &c);
}

// Local storage: the element's value is filled with a pattern of i; the map's key is the
// owner's fd (socket, pidfd, cgroup directory). The first slot of each context is the value.
struct storage_value {
	unsigned char *bytes;
	uint32_t size;
};

static struct storage_value storage_value(const struct bpf_map_info *info) {
	struct storage_value v = {calloc(1, info->value_size + 8), info->value_size};
	return v;
}

static int storage_put(int fd, uint32_t i, int owner, void *ctx) {
	struct storage_value *v = ctx;
	for (uint32_t b = 0; b < v->size; b++)
		v->bytes[b] = (unsigned char)(i + b);
	return update(fd, &owner, v->bytes, BPF_NOEXIST);
}

struct sk_storage_ctx {
	struct storage_value v;  // first: storage_put's view
	struct udp_ctx udp;
};

static int sk_make(uint32_t i, void *ctx) {
	return udp_make(i, &((struct sk_storage_ctx *)ctx)->udp);
}

static void cmd_sk_storage_fill(int argc, char **argv) {
	if (argc < 3)
		die("%s", "usage: sk-storage-fill PIN COUNT READYFILE");
	struct bpf_map_info info;
	int fd = fill_map(argv[0], BPF_MAP_TYPE_SK_STORAGE, &info);
	struct sk_storage_ctx c = {storage_value(&info), {0}};
	const struct owner_ops ops = {sk_make, storage_put, close_owner, NULL};
	fill_owners(fd, info.id, strtoul(argv[1], 0, 0), argv[2], &ops, &c);
}

struct task_storage_ctx {
	struct storage_value v;  // first: storage_put's view
	pid_t *pids;
};

// a child that only waits to be killed (SIGKILL from release, or mapctl's death)
static int task_make(uint32_t i, void *ctx) {
	struct task_storage_ctx *c = ctx;
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		die("%s", "fork");
	if (pid == 0) {
		signal(SIGTERM, SIG_DFL);
		sigprocmask(SIG_SETMASK, &unblocked_mask, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		for (;;)
			pause();
	}
	c->pids[i] = pid;
	int pfd = syscall(__NR_pidfd_open, pid, 0);
	if (pfd < 0)
		die("%s", "pidfd_open");
	return pfd;
}

static void task_release(uint32_t i, int pfd, void *ctx) {
	struct task_storage_ctx *c = ctx;
	kill(c->pids[i], SIGKILL);
	waitpid(c->pids[i], 0, 0);
	close(pfd);
}

static void cmd_task_storage_fill(int argc, char **argv) {
	if (argc < 3)
		die("%s", "usage: task-storage-fill PIN COUNT READYFILE");
	struct bpf_map_info info;
	int fd = fill_map(argv[0], MT_MAP_TYPE_TASK_STORAGE, &info);
	uint32_t count = strtoul(argv[1], 0, 0);
	struct task_storage_ctx c = {storage_value(&info), calloc(count + 1, sizeof(pid_t))};
	const struct owner_ops ops = {task_make, storage_put, task_release, task_release};
	fill_owners(fd, info.id, count, argv[2], &ops, &c);
}

// cgroup and inode storage: each owner is an entry DIR/<prefix><i> that ops->make creates
// and ops->release removes
struct dir_storage_ctx {
	struct storage_value v;  // first: storage_put's view
	const char *dir;
	char prefix;
	char path[4096];
};

static const char *entry_path(struct dir_storage_ctx *c, uint32_t i) {
	snprintf(c->path, sizeof(c->path), "%s/%c%u", c->dir, c->prefix, i);
	return c->path;
}

static int cgrp_make(uint32_t i, void *ctx) {
	struct dir_storage_ctx *c = ctx;
	if (mkdir(entry_path(c, i), 0755) < 0)
		die("cannot make cgroup %s", c->path);
	int dfd = open(c->path, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		die("cannot open cgroup %s", c->path);
	return dfd;
}

// an empty file: an inode (and dentry) charged to the caller's memcg, no page cache
static int file_make(uint32_t i, void *ctx) {
	struct dir_storage_ctx *c = ctx;
	int f = open(entry_path(c, i), O_RDONLY | O_CREAT | O_EXCL, 0644);
	if (f < 0)
		die("cannot create %s", c->path);
	return f;
}

// closes the owner's fd and removes its entry (remove(): rmdir for a cgroup, unlink for a file)
static void entry_release(uint32_t i, int fd, void *ctx) {
	struct dir_storage_ctx *c = ctx;
	close(fd);
	remove(entry_path(c, i));
}

// PIN DIR COUNT READYFILE, for a map of type TYPE whose owners ops makes under DIR
static void dir_storage_fill(int argc, char **argv, const char *usage, int type, char prefix,
			     const struct owner_ops *ops) {
	if (argc < 4)
		die("usage: %s PIN DIR COUNT READYFILE", usage);
	struct bpf_map_info info;
	int fd = fill_map(argv[0], type, &info);
	struct dir_storage_ctx c = {storage_value(&info), argv[1], prefix, ""};
	fill_owners(fd, info.id, strtoul(argv[2], 0, 0), argv[3], ops, &c);
}

static void cmd_cgrp_storage_fill(int argc, char **argv) {
	static const struct owner_ops ops = {cgrp_make, storage_put, entry_release, entry_release};
	dir_storage_fill(argc, argv, "cgrp-storage-fill", MT_MAP_TYPE_CGRP_STORAGE, 'c', &ops);
}

static void cmd_inode_storage_fill(int argc, char **argv) {
	static const struct owner_ops ops = {file_make, storage_put, entry_release, entry_release};
	dir_storage_fill(argc, argv, "inode-storage-fill", MT_MAP_TYPE_INODE_STORAGE, 'f', &ops);
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: mapctl COMMAND ...\n");
		return 2;
	}
	const char *cmd = argv[1];
	argc -= 2;
	argv += 2;
	if (!strcmp(cmd, "create"))
		cmd_create(argc, argv);
	else if (!strcmp(cmd, "fill"))
		cmd_fill(argc, argv, 0);
	else if (!strcmp(cmd, "delete"))
		cmd_fill(argc, argv, 1);
	else if (!strcmp(cmd, "id") && argc > 0)
		printf("%u\n", map_info(obj_get(argv[0])).id);
	else if (!strcmp(cmd, "fdinfo"))
		cmd_fdinfo();
	else if (!strcmp(cmd, "outer-set"))
		cmd_outer_set(argc, argv);
	else if (!strcmp(cmd, "inner-id"))
		cmd_inner_id(argc, argv);
	else if (!strcmp(cmd, "clone"))
		cmd_clone(argc, argv);
	else if (!strcmp(cmd, "sockhash-fill"))
		cmd_sockhash_fill(argc, argv);
	else if (!strcmp(cmd, "sk-storage-fill"))
		cmd_sk_storage_fill(argc, argv);
	else if (!strcmp(cmd, "task-storage-fill"))
		cmd_task_storage_fill(argc, argv);
	else if (!strcmp(cmd, "cgrp-storage-fill"))
		cmd_cgrp_storage_fill(argc, argv);
	else if (!strcmp(cmd, "inode-storage-fill"))
		cmd_inode_storage_fill(argc, argv);
	else {
		fprintf(stderr, "mapctl: unknown command %s\n", cmd);
		return 2;
	}
	return 0;
}
