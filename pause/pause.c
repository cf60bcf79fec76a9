/*
 * pause: the infrastructure process of a crictld pod sandbox.
 *
 * Copyright 2025 The crictld authors.
 * SPDX-License-Identifier: Apache-2.0
 *
 * It holds the sandbox's namespaces open and does nothing else:
 *   - sleeps until a signal arrives;
 *   - exits 0 on SIGINT or SIGTERM;
 *   - reaps every child it inherits (as PID 1 of a shared PID namespace it
 *     becomes the parent of all orphaned processes of the pod).
 *
 * Build: gcc -static -Os -o pause pause.c && strip pause
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAUSE_VERSION "crictld-pause 1.0"

static void on_terminate(int sig)
{
	(void)sig;
	_exit(0);
}

static void on_child(int sig)
{
	int saved_errno = errno;

	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	errno = saved_errno;
}

static int install(int sig, void (*handler)(int), int flags)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		if (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0) {
			puts(PAUSE_VERSION);
			return 0;
		}
		fprintf(stderr, "usage: %s [-v]\n", argv[0]);
		return 2;
	}
	if (getpid() != 1)
		fprintf(stderr, "pause: warning: not running as PID 1\n");

	if (install(SIGINT, on_terminate, 0) != 0 ||
	    install(SIGTERM, on_terminate, 0) != 0 ||
	    install(SIGCHLD, on_child, SA_NOCLDSTOP | SA_RESTART) != 0) {
		perror("pause: sigaction");
		return 1;
	}

	for (;;)
		pause();
	/* not reached */
	return 1;
}
