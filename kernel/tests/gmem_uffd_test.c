// SPDX-License-Identifier: GPL-2.0
/*
 * gmem_uffd_test: userfaultfd MISSING + MINOR on guest_memfd, and the KVM
 * memory-fault exit for vCPU accesses to pages with no folio — the behaviour
 * added by kernel/patches/.  Built static, run as root inside the patched
 * kernel (tools run-kernel-tests.sh boots it under QEMU TCG with nested SVM).
 *
 * Output: one "ok N name" / "not ok N name: why" line per case, then
 * "gmem_uffd_test: P passed, F failed, S skipped"; exit status 1 on failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* New UAPI from the series; defined here too so the test builds anywhere. */
#ifndef UFFD_FEATURE_GUEST_MEMFD
#define UFFD_FEATURE_GUEST_MEMFD (1 << 17)
#endif
#ifndef KVM_CAP_GUEST_MEMFD_EXIT_ON_MISSING
#define KVM_CAP_GUEST_MEMFD_EXIT_ON_MISSING 245
#endif
#ifndef KVM_MEMORY_EXIT_FLAG_MISSING
#define KVM_MEMORY_EXIT_FLAG_MISSING (1ULL << 4)
#endif

#define PAGE 4096UL
#define NPAGES 64

static int kvm_fd, vm_fd;
static int passed, failed, skipped, case_no;
static char why[256];

static bool fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return false;
}

static void report(const char *name, bool ok)
{
	case_no++;
	if (ok) {
		passed++;
		printf("ok %d %s\n", case_no, name);
	} else {
		failed++;
		printf("not ok %d %s: %s\n", case_no, name, why);
	}
	fflush(stdout);
}

static void skip(const char *name, const char *reason)
{
	case_no++;
	skipped++;
	printf("ok %d %s # SKIP %s\n", case_no, name, reason);
}

/* ---- fixtures ---------------------------------------------------------- */

struct gmem {
	int fd;
	uint8_t *reg;	/* registered with userfaultfd */
	uint8_t *alias;	/* a second, unregistered mapping of the same pages */
	int uffd;
};

static int create_gmem(uint64_t flags)
{
	struct kvm_create_guest_memfd args = {
		.size = NPAGES * PAGE, .flags = flags,
	};

	return ioctl(vm_fd, KVM_CREATE_GUEST_MEMFD, &args);
}

static int open_uffd(uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	int fd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);

	if (fd >= 0) {
		int ufd = ioctl(fd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);

		close(fd);
		fd = ufd;
	} else {
		fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	}
	if (fd < 0)
		return -1;
	if (ioctl(fd, UFFDIO_API, &api)) {
		close(fd);
		return -1;
	}
	return fd;
}

static int uffd_register(int uffd, void *addr, size_t len, uint64_t mode)
{
	struct uffdio_register r = {
		.range = { .start = (uintptr_t)addr, .len = len }, .mode = mode,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &r) ? -errno : 0;
}

static bool setup(struct gmem *g, uint64_t mode)
{
	memset(g, 0, sizeof(*g));
	g->fd = create_gmem(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
	if (!(g->fd >= 0))
		return fail("KVM_CREATE_GUEST_MEMFD: %s", strerror(errno));
	g->reg = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      g->fd, 0);
	g->alias = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
			MAP_SHARED, g->fd, 0);
	if (!(g->reg != MAP_FAILED && g->alias != MAP_FAILED))
		return fail("mmap: %s", strerror(errno));
	g->uffd = open_uffd(0);
	if (!(g->uffd >= 0))
		return fail("userfaultfd: %s", strerror(errno));
	int r = uffd_register(g->uffd, g->reg, NPAGES * PAGE, mode);

	if (r != 0)
		return fail("UFFDIO_REGISTER mode %#lx: %s", (unsigned long)mode, strerror(-r));
	return true;
}

static void teardown(struct gmem *g)
{
	if (g->uffd > 0)
		close(g->uffd);
	if (g->reg && g->reg != MAP_FAILED)
		munmap(g->reg, NPAGES * PAGE);
	if (g->alias && g->alias != MAP_FAILED)
		munmap(g->alias, NPAGES * PAGE);
	if (g->fd > 0)
		close(g->fd);
}

static int uffd_copy(int uffd, void *dst, const void *src, bool wake)
{
	struct uffdio_copy c = {
		.dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = PAGE,
		.mode = wake ? 0 : UFFDIO_COPY_MODE_DONTWAKE,
	};

	return ioctl(uffd, UFFDIO_COPY, &c) ? -errno : 0;
}

static int uffd_continue(int uffd, void *dst)
{
	struct uffdio_continue c = {
		.range = { .start = (uintptr_t)dst, .len = PAGE },
	};

	return ioctl(uffd, UFFDIO_CONTINUE, &c) ? -errno : 0;
}

static int uffd_zeropage(int uffd, void *dst)
{
	struct uffdio_zeropage z = {
		.range = { .start = (uintptr_t)dst, .len = PAGE },
	};

	return ioctl(uffd, UFFDIO_ZEROPAGE, &z) ? -errno : 0;
}

static int uffd_wake(int uffd, void *dst)
{
	struct uffdio_range r = { .start = (uintptr_t)dst, .len = PAGE };

	return ioctl(uffd, UFFDIO_WAKE, &r) ? -errno : 0;
}

/* Waits up to 5 s for one fault message. */
static bool read_fault(int uffd, struct uffd_msg *m)
{
	struct pollfd p = { .fd = uffd, .events = POLLIN };

	for (;;) {
		if (poll(&p, 1, 5000) != 1)
			return false;
		if (read(uffd, m, sizeof(*m)) == sizeof(*m) &&
		    m->event == UFFD_EVENT_PAGEFAULT)
			return true;
		if (errno != EAGAIN)
			return false;
	}
}

static int punch(int fd, unsigned long page, unsigned long n)
{
	return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			 page * PAGE, n * PAGE) ? -errno : 0;
}

/* A thread that reads one byte (or writes one) of a page and records it. */
struct toucher {
	pthread_t t;
	uint8_t *p;
	bool write;
	uint8_t value;
	bool done;
};

static void *touch_fn(void *arg)
{
	struct toucher *t = arg;

	if (t->write)
		__atomic_store_n(t->p, t->value, __ATOMIC_RELAXED);
	else
		t->value = __atomic_load_n(t->p, __ATOMIC_RELAXED);
	__atomic_store_n(&t->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void touch_start(struct toucher *t, void *p, bool write, uint8_t v)
{
	t->p = p;
	t->write = write;
	t->value = v;
	t->done = false;
	pthread_create(&t->t, NULL, touch_fn, t);
}

static void fill(uint8_t *buf, uint8_t seed)
{
	for (unsigned long i = 0; i < PAGE; i++)
		buf[i] = (uint8_t)(seed + i * 7);
}

static bool page_equals(const uint8_t *p, uint8_t seed)
{
	uint8_t want[PAGE];

	fill(want, seed);
	return memcmp(p, want, PAGE) == 0;
}

/* ---- cases -------------------------------------------------------------- */

static bool t_feature(void)
{
	struct uffdio_api api = { .api = UFFD_API };
	int fd = open_uffd(0);

	if (!(fd >= 0))
		return fail("userfaultfd: %s", strerror(errno));
	close(fd);
	fd = open_uffd(UFFD_FEATURE_GUEST_MEMFD);
	if (!(fd >= 0))
		return fail("UFFDIO_API with UFFD_FEATURE_GUEST_MEMFD: %s",
			    strerror(errno));
	close(fd);
	(void)api;
	return true;
}

static bool t_missing_copy(void)
{
	struct gmem g;
	struct uffd_msg m;
	struct toucher t;
	uint8_t src[PAGE];
	bool ok = false;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING))
		goto out;
	touch_start(&t, g.reg + 3 * PAGE + 100, false, 0);
	if (!read_fault(g.uffd, &m)) {
		fail("no MISSING event on first touch");
		goto join;
	}
	if (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR) {
		fail("got MINOR, want MISSING");
		goto join;
	}
	if ((m.arg.pagefault.address & ~(PAGE - 1)) !=
	    (uintptr_t)(g.reg + 3 * PAGE)) {
		fail("fault at %#llx, want page 3", m.arg.pagefault.address);
		goto join;
	}
	fill(src, 0x31);
	int r = uffd_copy(g.uffd, g.reg + 3 * PAGE, src, true);

	if (r) {
		fail("UFFDIO_COPY: %s", strerror(-r));
		goto join;
	}
	pthread_join(t.t, NULL);
	if (t.value != src[100]) {
		fail("reader saw %#x, want %#x", t.value, src[100]);
		goto out;
	}
	/* The page is in the guest_memfd itself, not private to the VMA. */
	if (!page_equals(g.alias + 3 * PAGE, 0x31)) {
		fail("alias mapping does not see the copied page");
		goto out;
	}
	/* A second COPY must not overwrite it. */
	fill(src, 0x77);
	r = uffd_copy(g.uffd, g.reg + 3 * PAGE, src, true);
	if (r != -EEXIST) {
		fail("second UFFDIO_COPY: %d, want -EEXIST", r);
		goto out;
	}
	ok = page_equals(g.reg + 3 * PAGE, 0x31) ||
	     fail("page changed by the refused COPY");
	goto out;
join:
	uffd_wake(g.uffd, g.reg + 3 * PAGE);
	uffd_copy(g.uffd, g.reg + 3 * PAGE, src, true);
	pthread_join(t.t, NULL);
out:
	teardown(&g);
	return ok;
}

static bool t_zeropage(void)
{
	struct gmem g;
	struct uffd_msg m;
	struct toucher t;
	bool ok = false;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING))
		goto out;
	touch_start(&t, g.reg + 5 * PAGE + 8, true, 0xAB);
	if (!read_fault(g.uffd, &m)) {
		fail("no MISSING event on a write");
		pthread_cancel(t.t);
		goto out;
	}
	int r = uffd_zeropage(g.uffd, g.reg + 5 * PAGE);

	pthread_join(t.t, NULL);
	if (r) {
		fail("UFFDIO_ZEROPAGE: %s", strerror(-r));
		goto out;
	}
	for (unsigned long i = 0; i < PAGE; i++) {
		if (g.alias[5 * PAGE + i] != (i == 8 ? 0xAB : 0)) {
			fail("byte %lu is %#x after ZEROPAGE + write", i,
			     g.alias[5 * PAGE + i]);
			goto out;
		}
	}
	r = uffd_zeropage(g.uffd, g.reg + 5 * PAGE);
	ok = r == -EEXIST || fail("ZEROPAGE on a present page: %d", r);
out:
	teardown(&g);
	return ok;
}

static bool t_minor_continue(void)
{
	struct gmem g;
	struct uffd_msg m;
	struct toucher t;
	bool ok = false;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR))
		goto out;
	/* Fill page 7 through the unregistered alias: folio, but unmapped. */
	fill(g.alias + 7 * PAGE, 0x42);
	touch_start(&t, g.reg + 7 * PAGE + 1, false, 0);
	if (!read_fault(g.uffd, &m)) {
		fail("no event for a page in the page cache");
		pthread_cancel(t.t);
		goto out;
	}
	if (!(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_MINOR)) {
		fail("got MISSING, want MINOR");
		uffd_continue(g.uffd, g.reg + 7 * PAGE);
		pthread_join(t.t, NULL);
		goto out;
	}
	int r = uffd_continue(g.uffd, g.reg + 7 * PAGE);

	pthread_join(t.t, NULL);
	if (r) {
		fail("UFFDIO_CONTINUE: %s", strerror(-r));
		goto out;
	}
	if (!page_equals(g.reg + 7 * PAGE, 0x42)) {
		fail("CONTINUE mapped something else");
		goto out;
	}
	/* COPY on a page that has a folio: -EEXIST, content kept. */
	uint8_t src[PAGE];

	fill(src, 0x99);
	r = uffd_copy(g.uffd, g.reg + 7 * PAGE, src, true);
	if (r != -EEXIST) {
		fail("COPY over a present folio: %d, want -EEXIST", r);
		goto out;
	}
	/* CONTINUE where there is no folio: -EFAULT. */
	r = uffd_continue(g.uffd, g.reg + 8 * PAGE);
	ok = r == -EFAULT || fail("CONTINUE without a folio: %d, want -EFAULT", r);
out:
	teardown(&g);
	return ok;
}

static bool t_two_threads(void)
{
	struct gmem g;
	struct uffd_msg m;
	struct toucher t[2];
	uint8_t src[PAGE];
	int events = 0, copies = 0;
	bool ok = false;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING))
		goto out;
	fill(src, 0x55);
	touch_start(&t[0], g.reg + 9 * PAGE + 10, false, 0);
	touch_start(&t[1], g.reg + 9 * PAGE + 20, false, 0);
	/* Resolve every event; the second COPY of the page is -EEXIST. */
	while (!(__atomic_load_n(&t[0].done, __ATOMIC_ACQUIRE) &&
		 __atomic_load_n(&t[1].done, __ATOMIC_ACQUIRE)) &&
	       read_fault(g.uffd, &m)) {
		events++;
		int r = uffd_copy(g.uffd, g.reg + 9 * PAGE, src, true);

		if (r == 0)
			copies++;
		else if (r == -EEXIST)
			uffd_wake(g.uffd, g.reg + 9 * PAGE);
		else
			break;
		usleep(1000);
	}
	pthread_join(t[0].t, NULL);
	pthread_join(t[1].t, NULL);
	if (!(events >= 1))
		return fail("no fault events");
	if (!(copies == 1))
		return fail("%d successful copies of one page", copies);
	if (!(t[0].value == src[10] && t[1].value == src[20]))
		return fail("readers saw %#x/%#x", t[0].value, t[1].value);
	ok = true;
out:
	teardown(&g);
	return ok;
}

struct racer {
	pthread_barrier_t *bar;
	int uffd;
	uint8_t *dst;
	const uint8_t *src;
	bool copy;
	int result;
};

static void *race_fn(void *arg)
{
	struct racer *r = arg;

	pthread_barrier_wait(r->bar);
	r->result = r->copy ? uffd_copy(r->uffd, r->dst, r->src, true) :
			      uffd_continue(r->uffd, r->dst);
	return NULL;
}

static bool t_copy_races_continue(void)
{
	struct gmem g;
	uint8_t src[PAGE];
	bool ok = false;
	int copy_won = 0, continue_won = 0;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR))
		goto out;
	fill(src, 0x66);
	for (int i = 0; i < 200; i++) {
		unsigned long pg = 10 + i % 8;
		pthread_barrier_t bar;
		struct racer a = { &bar, g.uffd, g.reg + pg * PAGE, src, true },
			     b = { &bar, g.uffd, g.reg + pg * PAGE, src, false };
		pthread_t ta, tb;

		/* Half the rounds start with a folio (filled via the alias). */
		if (i & 1)
			fill(g.alias + pg * PAGE, 0x24);
		pthread_barrier_init(&bar, NULL, 2);
		pthread_create(&ta, NULL, race_fn, &a);
		pthread_create(&tb, NULL, race_fn, &b);
		pthread_join(ta, NULL);
		pthread_join(tb, NULL);
		pthread_barrier_destroy(&bar);
		/*
		 * Exactly one of them may install the PTE.  COPY can only win
		 * on a page with no folio, and then CONTINUE sees -EFAULT
		 * (no folio yet) or -EEXIST (mapped already).
		 */
		if (a.result == 0 && b.result == 0) {
			fail("round %d: both COPY and CONTINUE succeeded", i);
			goto out;
		}
		if (a.result == 0) {
			copy_won++;
			if (i & 1) {
				fail("round %d: COPY replaced an existing folio", i);
				goto out;
			}
			if (!page_equals(g.reg + pg * PAGE, 0x66)) {
				fail("round %d: COPY won, content differs", i);
				goto out;
			}
		} else if (b.result == 0) {
			continue_won++;
			if (!page_equals(g.reg + pg * PAGE, 0x24)) {
				fail("round %d: CONTINUE won, content differs", i);
				goto out;
			}
		} else if (!((a.result == -EEXIST || a.result == -EFAULT) &&
			     (b.result == -EEXIST || b.result == -EFAULT))) {
			fail("round %d: copy %d continue %d", i, a.result,
			     b.result);
			goto out;
		}
		/* Back to no folio, no PTE. */
		if (punch(g.fd, pg, 1)) {
			fail("punch hole: %s", strerror(errno));
			goto out;
		}
	}
	printf("# copy_races_continue: COPY won %d, CONTINUE won %d of 200\n",
	       copy_won, continue_won);
	ok = (copy_won > 0 && continue_won > 0) ||
	     fail("one side never won (copy %d continue %d)", copy_won,
		  continue_won);
out:
	teardown(&g);
	return ok;
}

static bool t_punch_hole_during_fault(void)
{
	struct gmem g;
	struct uffd_msg m;
	struct toucher t;
	uint8_t src[PAGE];
	bool ok = false;

	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING))
		goto out;
	touch_start(&t, g.reg + 20 * PAGE, false, 0);
	if (!read_fault(g.uffd, &m)) {
		fail("no MISSING event");
		pthread_cancel(t.t);
		goto out;
	}
	/* The hole punch runs while the fault is pending. */
	int r = punch(g.fd, 16, 8);

	if (r) {
		fail("punch hole during fault: %s", strerror(-r));
		goto out;
	}
	fill(src, 0x13);
	r = uffd_copy(g.uffd, g.reg + 20 * PAGE, src, true);
	pthread_join(t.t, NULL);
	if (r != 0)
		return fail("COPY after punch: %s", strerror(-r));
	if (!(t.value == src[0]))
		return fail("reader saw %#x", t.value);
	/* Punch the now-mapped page: the PTE goes, the next touch faults again. */
	r = punch(g.fd, 20, 1);
	if (r != 0)
		return fail("punch mapped page: %s", strerror(-r));
	touch_start(&t, g.reg + 20 * PAGE, false, 0);
	if (!read_fault(g.uffd, &m)) {
		fail("no MISSING event after the page was punched out");
		uffd_copy(g.uffd, g.reg + 20 * PAGE, src, true);
		pthread_join(t.t, NULL);
		goto out;
	}
	fill(src, 0x14);
	r = uffd_copy(g.uffd, g.reg + 20 * PAGE, src, true);
	pthread_join(t.t, NULL);
	if (r != 0)
		return fail("COPY after second punch: %s", strerror(-r));
	ok = (t.value == src[0] && page_equals(g.alias + 20 * PAGE, 0x14)) ||
	     fail("stale content after punch: %#x", t.value);
out:
	teardown(&g);
	return ok;
}

static bool t_register_refused(void)
{
	int uffd = open_uffd(0);
	uint8_t *p;
	int r;

	if (!(uffd >= 0))
		return fail("userfaultfd: %s", strerror(errno));
	/* Write-protect mode is not supported on guest_memfd. */
	int fd = create_gmem(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);

	if (!(fd >= 0))
		return fail("create: %s", strerror(errno));
	p = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (!(p != MAP_FAILED))
		return fail("mmap: %s", strerror(errno));
	r = uffd_register(uffd, p, NPAGES * PAGE, UFFDIO_REGISTER_MODE_WP);
	if (!(r == -EINVAL))
		return fail("WP registration: %d, want -EINVAL", r);
	munmap(p, NPAGES * PAGE);
	close(fd);
	/* Without INIT_SHARED userspace cannot fault the memory in at all. */
	fd = create_gmem(GUEST_MEMFD_FLAG_MMAP);
	if (!(fd >= 0))
		return fail("create private: %s", strerror(errno));
	p = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (!(p != MAP_FAILED))
		return fail("mmap private: %s", strerror(errno));
	r = uffd_register(uffd, p, NPAGES * PAGE, UFFDIO_REGISTER_MODE_MISSING);
	if (!(r == -EINVAL))
		return fail("MISSING on private guest_memfd: %d, want -EINVAL", r);
	munmap(p, NPAGES * PAGE);
	close(fd);
	close(uffd);
	return true;
}

/* shmem must keep working exactly as before. */
static bool t_shmem_unchanged(void)
{
	int fd = memfd_create("shmem", 0), uffd = open_uffd(0);
	struct uffd_msg m;
	struct toucher t;
	uint8_t src[PAGE], *p;

	if (!(fd >= 0 && uffd >= 0 && ftruncate(fd, 4 * PAGE) == 0))
		return fail("setup");
	p = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (!(p != MAP_FAILED))
		return fail("mmap");
	if (uffd_register(uffd, p, 4 * PAGE, UFFDIO_REGISTER_MODE_MISSING |
						  UFFDIO_REGISTER_MODE_MINOR))
		return fail("register shmem");
	touch_start(&t, p + PAGE, false, 0);
	if (!(read_fault(uffd, &m)))
		return fail("no shmem MISSING event");
	fill(src, 0x71);
	int r = uffd_copy(uffd, p + PAGE, src, true);

	pthread_join(t.t, NULL);
	if (!(r == 0 && t.value == src[0]))
		return fail("shmem COPY %d value %#x", r, t.value);
	munmap(p, 4 * PAGE);
	close(uffd);
	close(fd);
	return true;
}

/* ---- KVM: vCPU access to a page with no folio --------------------------- */

static bool t_kvm_exit_on_missing(void)
{
	struct gmem g;
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct kvm_run *run;
	struct uffd_msg m;
	struct toucher t;
	uint8_t src[PAGE];
	int vcpu = -1, vm = -1, r;
	bool ok = false;
	int saved_vm = vm_fd;

	/* A VM of its own: its memslot covers the guest_memfd. */
	vm = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (!(vm >= 0))
		return fail("KVM_CREATE_VM: %s", strerror(errno));
	vm_fd = vm;
	if (!setup(&g, UFFDIO_REGISTER_MODE_MISSING))
		goto out;
	r = ioctl(vm, KVM_CHECK_EXTENSION, KVM_CAP_GUEST_MEMFD_EXIT_ON_MISSING);
	if (r <= 0) {
		fail("KVM_CAP_GUEST_MEMFD_EXIT_ON_MISSING not reported (%d)", r);
		goto out;
	}
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_GUEST_MEMFD_EXIT_ON_MISSING, .args = { 1 },
	};
	if (ioctl(vm, KVM_ENABLE_CAP, &cap)) {
		fail("KVM_ENABLE_CAP: %s", strerror(errno));
		goto out;
	}
	cap.args[0] = 2;
	if (ioctl(vm, KVM_ENABLE_CAP, &cap) == 0 || errno != EINVAL) {
		fail("KVM_ENABLE_CAP(2) not refused");
		goto out;
	}
	struct kvm_userspace_memory_region2 slot = {
		.slot = 0, .flags = KVM_MEM_GUEST_MEMFD, .guest_phys_addr = 0,
		.memory_size = NPAGES * PAGE, .userspace_addr = (uintptr_t)g.reg,
		.guest_memfd = g.fd, .guest_memfd_offset = 0,
	};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION2, &slot)) {
		fail("KVM_SET_USER_MEMORY_REGION2: %s", strerror(errno));
		goto out;
	}
	/*
	 * Code at 0x1000 (written through the alias, so it has a folio):
	 *   mov al, [0x2000] ; mov bl, [0x3000] ; hlt
	 * 0x2000 has no folio: exit.  0x3000 is read with the capability
	 * disabled: KVM allocates a zero page as before.
	 */
	static const uint8_t code[] = { 0xA0, 0x00, 0x20, 0x8A, 0x1E, 0x00,
					0x30, 0xF4 };
	memcpy(g.alias + 1 * PAGE, code, sizeof(code));

	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0) {
		fail("KVM_CREATE_VCPU: %s", strerror(errno));
		goto out;
	}
	long run_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);

	run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) {
		fail("mmap kvm_run");
		goto out;
	}
	ioctl(vcpu, KVM_GET_SREGS, &sregs);
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	sregs.ds.base = 0;
	sregs.ds.selector = 0;
	ioctl(vcpu, KVM_SET_SREGS, &sregs);
	memset(&regs, 0, sizeof(regs));
	regs.rip = 0x1000;
	regs.rflags = 2;
	ioctl(vcpu, KVM_SET_REGS, &regs);

	r = ioctl(vcpu, KVM_RUN, 0);
	if (!(r == -1 && errno == EFAULT &&
	      run->exit_reason == KVM_EXIT_MEMORY_FAULT)) {
		fail("KVM_RUN: r=%d errno=%d exit=%u, want EFAULT + MEMORY_FAULT",
		     r, errno, run->exit_reason);
		goto out_run;
	}
	if (!(run->memory_fault.flags & KVM_MEMORY_EXIT_FLAG_MISSING) ||
	    run->memory_fault.gpa != 0x2000) {
		fail("memory_fault flags %#llx gpa %#llx",
		     run->memory_fault.flags, run->memory_fault.gpa);
		goto out_run;
	}
	/* The VMM touches the page through its registered mapping... */
	touch_start(&t, g.reg + 2 * PAGE, false, 0);
	if (!read_fault(g.uffd, &m)) {
		fail("VMM touch raised no MISSING event");
		pthread_cancel(t.t);
		goto out_run;
	}
	/* ...the pager fills it... */
	memset(src, 0x5A, sizeof(src));
	r = uffd_copy(g.uffd, g.reg + 2 * PAGE, src, true);
	pthread_join(t.t, NULL);
	if (r) {
		fail("COPY: %s", strerror(-r));
		goto out_run;
	}
	/* ...and the vCPU re-enters; the next page is read with the cap off. */
	cap.args[0] = 0;
	ioctl(vm, KVM_ENABLE_CAP, &cap);
	r = ioctl(vcpu, KVM_RUN, 0);
	if (r != 0 || run->exit_reason != KVM_EXIT_HLT) {
		fail("second KVM_RUN: r=%d errno=%d exit=%u, want HLT", r, errno,
		     run->exit_reason);
		goto out_run;
	}
	ioctl(vcpu, KVM_GET_REGS, &regs);
	ok = ((regs.rax & 0xff) == 0x5A && (regs.rbx & 0xff) == 0) ||
	     fail("guest read al=%#llx bl=%#llx", regs.rax & 0xff,
		  regs.rbx & 0xff);
out_run:
	munmap(run, run_size);
out:
	if (vcpu >= 0)
		close(vcpu);
	teardown(&g);
	close(vm);
	vm_fd = saved_vm;
	return ok;
}

int main(int argc, char **argv)
{
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		printf("gmem_uffd_test: /dev/kvm: %s — cannot create guest_memfd\n",
		       strerror(errno));
		return 1;
	}
	vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
	if (vm_fd < 0) {
		printf("gmem_uffd_test: KVM_CREATE_VM: %s\n", strerror(errno));
		return 1;
	}
	report("feature_bit", t_feature());
	report("missing_copy", t_missing_copy());
	report("zeropage", t_zeropage());
	report("minor_continue", t_minor_continue());
	report("two_threads_one_page", t_two_threads());
	report("copy_races_continue", t_copy_races_continue());
	report("punch_hole_during_fault", t_punch_hole_during_fault());
	report("registration_refused", t_register_refused());
	report("shmem_unchanged", t_shmem_unchanged());
	if (argc > 1 && !strcmp(argv[1], "--no-vcpu"))
		skip("kvm_exit_on_missing", "--no-vcpu given");
	else
		report("kvm_exit_on_missing", t_kvm_exit_on_missing());
	printf("gmem_uffd_test: %d passed, %d failed, %d skipped\n", passed,
	       failed, skipped);
	return failed ? 1 : 0;
}
