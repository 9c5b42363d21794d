/*
 * meridian-agent: the site agent's command line. Parses flags, loads the
 * site config and hands over to the runner (--print-summary), the link
 * loop (run) or join.c (join). No scheduler or protocol logic here.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/err.h"
#include "common/keys.h"
#include "common/log.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/join.h"
#include "site-agent/loop.h"
#include "site-agent/runner.h"

static atomic_int stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	atomic_store(&stop_flag, 1);
}

static void usage(FILE *f)
{
	const char *const *k = mer_agent_adapter_kinds();

	fprintf(f,
		"usage: meridian-agent --config SITE.json [--print-summary]\n"
		"       meridian-agent join --broker URL --token T "
		"--broker-key SHA256:... --config SITE.json\n"
		"       meridian-agent --help\n"
		"\n"
		"  --config FILE      the site config (docs/AGENT.md)\n"
		"  --print-summary    probe the scheduler once, print what the "
		"site offers\n"
		"                     as JSON and exit (1 if the scheduler "
		"cannot be reached)\n"
		"  --log-level LEVEL  debug, info, warn, error (default info)\n"
		"  join               register this site with a broker using "
		"a one-time token;\n"
		"                     the site key goes to agent.key_file "
		"(created 0600)\n"
		"\n"
		"Without --print-summary the agent runs: it reports the "
		"summary every\n"
		"agent.report_interval and on change, takes launch/cancel "
		"commands and\n"
		"reports stage events until the broker acknowledges them.\n"
		"Schedulers:");
	for (; *k; k++)
		fprintf(f, " %s", *k);
	fprintf(f, "\n");
}

static int print_summary(const struct mer_agent_cfg *cfg)
{
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[1024] = "";
	int rv;

	if ((rv = mer_agent_open(cfg, &a, err, sizeof(err)))) {
		fprintf(stderr, "meridian-agent: %s\n", err);
		return 1;
	}
	rv = mer_agent_probe(a);
	if (mer_agent_summary(a, &s) == 0) {
		char *t = json_dumps(s, JSON_INDENT(2) | JSON_SORT_KEYS);
		if (t)
			printf("%s\n", t);
		free(t);
	}
	json_decref(s);
	if (rv)
		fprintf(stderr, "meridian-agent: scheduler: %s\n",
			mer_agent_unhealthy_reason(a));
	mer_agent_close(a);
	return rv ? 1 : 0;
}

static int run(const struct mer_agent_cfg *cfg)
{
	struct mer_keypair kp;
	struct mer_agent_loop_opts o = {0};
	char err[1024] = "";
	int rv;

	if ((rv = mer_keypair_load(cfg->key_file, &kp, err, sizeof(err)))) {
		fprintf(stderr,
			"meridian-agent: %s (run 'meridian-agent join' "
			"first)\n",
			err[0] ? err : mer_strerror(rv));
		return 1;
	}
	o.cfg = cfg;
	o.key = &kp;
	o.stop = &stop_flag;
	rv = mer_agent_loop_run(&o, err, sizeof(err));
	mer_keypair_wipe(&kp);
	if (rv) {
		fprintf(stderr, "meridian-agent: %s\n",
			err[0] ? err : mer_strerror(rv));
		return 1;
	}
	return 0;
}

static int join(const struct mer_agent_cfg *cfg, const char *broker,
		const char *token, const char *fp)
{
	struct mer_agent_join_opts o = {0};
	struct mer_agent_join_result r;
	char err[1024] = "";
	int rv;

	o.broker_url = broker;
	o.token = token;
	o.broker_fp = fp;
	o.key_path = cfg->key_file;
	rv = mer_agent_join(&o, &r, err, sizeof(err));
	if (rv) {
		fprintf(stderr, "meridian-agent: %s\n", err);
		return 1;
	}
	printf("joined as site %s (region %s); site key %s%s\n", r.site,
	       r.region, r.fingerprint,
	       r.key_created ? " (new key written)" : "");
	if (strcmp(r.site, cfg->name) != 0)
		fprintf(stderr,
			"meridian-agent: warning: the broker recorded site "
			"'%s' but site.name is '%s'\n",
			r.site, cfg->name);
	return 0;
}

int main(int argc, char **argv)
{
	const char *config = NULL, *broker = NULL, *token = NULL, *fp = NULL;
	int print = 0, is_join = 0, rv;
	struct mer_agent_cfg cfg = {0};
	char err[1024];

	mer_log_set_component("agent");
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *next = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(a, "join") && i == 1) {
			is_join = 1;
		} else if (!strcmp(a, "--print-summary")) {
			print = 1;
		} else if (next && !strcmp(a, "--config")) {
			config = argv[++i];
		} else if (next && !strcmp(a, "--broker")) {
			broker = argv[++i];
		} else if (next && !strcmp(a, "--token")) {
			token = argv[++i];
		} else if (next && !strcmp(a, "--broker-key")) {
			fp = argv[++i];
		} else if (next && !strcmp(a, "--log-level")) {
			enum mer_log_level l;
			if (mer_log_level_parse(argv[++i], &l)) {
				fprintf(stderr,
					"meridian-agent: bad log level "
					"'%s'\n",
					argv[i]);
				return 2;
			}
			mer_log_set_level(l);
		} else {
			fprintf(stderr,
				"meridian-agent: unknown or incomplete "
				"argument '%s'\n",
				a);
			usage(stderr);
			return 2;
		}
	}
	if (!config) {
		fprintf(stderr, "meridian-agent: --config is required\n");
		usage(stderr);
		return 2;
	}
	if (is_join && (!broker || !token || !fp)) {
		fprintf(stderr, "meridian-agent: join needs --broker, --token "
				"and --broker-key\n");
		return 2;
	}
	if (sodium_init() < 0) {
		fprintf(stderr, "meridian-agent: libsodium failed to start\n");
		return 1;
	}
	if ((rv = mer_agent_cfg_load(config, &cfg, err, sizeof(err)))) {
		fprintf(stderr, "%s\n", err);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (is_join) {
		rv = join(&cfg, broker, token, fp);
	} else if (print) {
		rv = print_summary(&cfg);
	} else {
		struct sigaction sa = {0};
		sa.sa_handler = on_signal;
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		rv = run(&cfg);
	}
	mer_agent_cfg_free(&cfg);
	return rv;
}
