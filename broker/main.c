/*
 * meridian-broker: runs the broker from a config file until SIGTERM/SIGINT,
 * reloading the tenants and policy files on SIGHUP. Also two helpers for
 * operators: `hash-token` (the tenants file's form of an API token, read
 * from stdin) and `check-config FILE`. Everything else is in broker.c.
 */
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <sodium.h>

#include "broker/broker.h"
#include "common/err.h"
#include "common/log.h"

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: meridian-broker --config FILE\n"
	    "       meridian-broker check-config FILE\n"
	    "       meridian-broker hash-token   (token on stdin)\n"
	    "       meridian-broker --help\n"
	    "\n"
	    "  --config FILE       run the broker: REST API, agent link,\n"
	    "                      placement and dispatch, state in etcd\n"
	    "                      (deploy/examples/broker.json; "
	    "docs/CONFIG.md)\n"
	    "  check-config FILE   validate a config file and exit (errors as\n"
	    "                      file:line:column)\n"
	    "  hash-token          read an API token on stdin and print the "
	    "hash\n"
	    "                      to put in the tenants file "
	    "(docs/OPERATIONS.md)\n"
	    "\n"
	    "Signals: SIGHUP reloads the policy file; SIGTERM or SIGINT stop.\n"
	    "Exit: 0 ok, 1 could not start or bad config, 2 usage.\n");
}

static int hash_token(void)
{
	char line[1024], hex[MER_API_HASH_HEX];
	size_t n;

	if (!fgets(line, sizeof(line), stdin)) {
		fprintf(stderr, "meridian-broker: no token on stdin\n");
		return 2;
	}
	n = strcspn(line, "\r\n");
	line[n] = 0;
	if (n < 16) {
		fprintf(stderr, "meridian-broker: a token needs at least 16 "
				"characters\n");
		sodium_memzero(line, sizeof(line));
		return 2;
	}
	mer_api_token_hash_hex(line, hex);
	sodium_memzero(line, sizeof(line));
	printf("%s\n", hex);
	return 0;
}

int main(int argc, char **argv)
{
	const char *cfg = NULL;
	struct mer_broker *b = NULL;
	char err[1024] = "";
	sigset_t set;
	int rv, sig;

	if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != 0) {
		fprintf(stderr, "meridian-broker: cannot initialise crypto\n");
		return 1;
	}
	mer_log_set_component("broker");
	if (argc == 2 &&
	    (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc == 2 && strcmp(argv[1], "hash-token") == 0)
		return hash_token();
	if (argc == 3 && strcmp(argv[1], "check-config") == 0) {
		struct mer_broker_cfg c = {0};
		rv = mer_broker_cfg_load(argv[2], &c, err, sizeof(err));
		mer_broker_cfg_free(&c);
		if (rv) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		printf("%s: ok\n", argv[2]);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "--config") == 0)
		cfg = argv[2];
	if (!cfg) {
		usage(stderr);
		return 2;
	}
	/*
	 * The submit path allocates and frees buffers of a few hundred KiB
	 * per etcd txn (a batch's request and answer) on many threads. With
	 * glibc's defaults those go to mmap/munmap or are trimmed back to
	 * the kernel and faulted in again each time: ~10% of the broker's
	 * CPU under load (perf). Keeping up to 16 MiB per arena and 1 MiB
	 * blocks on the heap gave ~5% more durable submissions at 64 clients
	 * (bench/submit_bench) at the same RSS. GLIBC_TUNABLES still wins.
	 */
	if (!getenv("GLIBC_TUNABLES")) {
		mallopt(M_MMAP_THRESHOLD, 1 << 20);
		mallopt(M_TRIM_THRESHOLD, 16 << 20);
	}
	/* Signals are taken by sigwait below; every thread inherits the
	 * mask, so none of them is interrupted. */
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	rv = mer_broker_new(cfg, &b, err, sizeof(err));
	if (rv) {
		mer_error("cannot start", "why=%s", err);
		return 1;
	}
	rv = mer_broker_start(b, err, sizeof(err));
	if (rv) {
		mer_error("cannot start", "why=%s", err);
		mer_broker_free(b);
		return 1;
	}
	for (;;) {
		if (sigwait(&set, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			err[0] = 0;
			if (mer_broker_reload(b, err, sizeof(err)))
				mer_error("reload refused, keeping the "
					  "running files",
					  "why=%s", err);
			continue;
		}
		break;
	}
	mer_info("stopping", "signal=%d", sig);
	mer_broker_free(b);
	curl_global_cleanup();
	return 0;
}
