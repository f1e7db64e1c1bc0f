// SPDX-License-Identifier: GPL-2.0
/*
 * /init of the kernel test VM: mounts what the tests need, runs every line of
 * /tests.list ("name command args...") with a timeout, prints
 * "FLT-RESULT <name> <exit status>" after each, then reboots (QEMU runs with -no-reboot, so it exits).
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
	setvbuf(stdout, NULL, _IOLBF, 0);
	loopback_up();

	list = fopen("/tests.list", "r");
	if (!list) {
		printf("init: /tests.list: %s\n", strerror(errno));
	} else {
		while (fgets(line, sizeof(line), list)) {
			char name[128];

			if (line[0] == '#' || sscanf(line, "%127s", name) != 1)
				continue;
			printf("FLT-START %s\n", name);
			int rc = run(line, 900);

			printf("FLT-RESULT %s %d\n", name, rc);
		}
		fclose(list);
	}
	sync();
	/* No ACPI in the test kernel: reboot, which -no-reboot turns into QEMU exiting. */
	reboot(RB_AUTOBOOT);
	return 0;
}
