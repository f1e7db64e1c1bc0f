// SPDX-License-Identifier: GPL-2.0
/*
 * /init of the kernel test VM: mounts what the tests need (cgroup2 with the
 * memory controller enabled for children), runs every line of /tests.list
 * ("name[:timeout_s] command args...") with a timeout (default 900 s), prints
 * "FLT-START <name>" before and "FLT-RESULT <name> <exit status>" after each,
 * then reports whether the kernel got tainted (a WARN, an oops) as the
 * pseudo-test "kernel_not_tainted", with the kernel log lines that say why,
 * and reboots (QEMU runs with -no-reboot, so it exits).
 * Static, no libc beyond what glibc's static build brings.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/klog.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void mnt(const char *src, const char *dst, const char *type,
		const char *opts)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, 0, opts) && errno != EBUSY)
		printf("init: mount %s: %s\n", dst, strerror(errno));
}

static int run(char *line, int timeout_s)
{
	char *argv[64];
	int argc = 0;

	for (char *tok = strtok(line, " \t\n"); tok && argc < 63;
	     tok = strtok(NULL, " \t\n"))
		argv[argc++] = tok;
	argv[argc] = NULL;
	if (argc < 2)
		return -1;

	pid_t pid = fork();

	if (pid == 0) {
		setenv("PATH", "/bin:/tests", 1);
		setenv("LD_LIBRARY_PATH", "/lib", 1);
		setenv("FAULTLINE_GUEST_ELF", "/tests/faultline-guest", 1);
		chdir("/tests");
		execv(argv[1], argv + 1);
		printf("init: exec %s: %s\n", argv[1], strerror(errno));
		_exit(127);
	}
	for (int waited = 0;; waited++) {
		int status;
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) :
						   128 + WTERMSIG(status);
		if (waited >= timeout_s * 10) {
			printf("init: %s timed out after %d s\n", argv[0],
			       timeout_s);
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			return 124;
		}
		usleep(100000);
	}
}

static void write_file(const char *path, const char *val)
{
	FILE *f = fopen(path, "w");

	if (!f || fputs(val, f) < 0 || fclose(f)) {
		printf("init: writing %s to %s: %s\n", val, path,
		       strerror(errno));
		return;
	}
}

/* 0 if the kernel is not tainted; else prints the log lines that say why. */
static int kernel_not_tainted(void)
{
	static char log[1 << 20];
	unsigned long tainted = 0;
	FILE *f = fopen("/proc/sys/kernel/tainted", "r");
	int n;

	if (f) {
		if (fscanf(f, "%lu", &tainted) != 1)
			tainted = 0;
		fclose(f);
	}
	printf("init: kernel tainted = %lu\n", tainted);
	if (!tainted)
		return 0;
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, log, sizeof(log) - 1);
	if (n > 0) {
		log[n] = 0;
		for (char *line = strtok(log, "\n"); line;
		     line = strtok(NULL, "\n"))
			printf("kernel: %s\n", line);
	}
	return 1;
}

/* Loopback up: the e2e migration talks TCP to 127.0.0.1. */
static void loopback_up(void)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	strcpy(ifr.ifr_name, "lo");
	if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		goto err;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
		goto err;
	close(fd);
	return;
err:
	printf("init: bringing up lo: %s\n", strerror(errno));
	if (fd >= 0)
		close(fd);
}

int main(void)
{
	char line[1024];
	FILE *list;

	mnt("proc", "/proc", "proc", NULL);
	mnt("sysfs", "/sys", "sysfs", NULL);
	mnt("devtmpfs", "/dev", "devtmpfs", NULL);
	mnt("tmpfs", "/tmp", "tmpfs", NULL);
	mnt("tmpfs", "/run", "tmpfs", NULL);
	mnt("hugetlbfs", "/dev/hugepages", "hugetlbfs", NULL);
	mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
	loopback_up();

	list = fopen("/tests.list", "r");
	if (!list) {
		printf("init: /tests.list: %s\n", strerror(errno));
	} else {
		while (fgets(line, sizeof(line), list)) {
			char name[128];

			int timeout_s = 900;
			char *colon;

			if (line[0] == '#' || sscanf(line, "%127s", name) != 1)
				continue;
			colon = strchr(name, ':');
			if (colon) {
				timeout_s = atoi(colon + 1);
				*colon = 0;
			}
			printf("FLT-START %s\n", name);
			int rc = run(line, timeout_s);

			printf("FLT-RESULT %s %d\n", name, rc);
		}
		fclose(list);
	}
	printf("FLT-START kernel_not_tainted\n");
	printf("FLT-RESULT kernel_not_tainted %d\n", kernel_not_tainted());
	sync();
	/* No ACPI in the test kernel: reboot, which -no-reboot turns into QEMU exiting. */
	reboot(RB_AUTOBOOT);
	return 0;
}
