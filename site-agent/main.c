/*
 * meridian-agent: the site agent's command line. Parses flags, loads the
 * site config and hands over to the runner (--print-summary), the link
 * loop (run) or join.c (join). No scheduler or protocol logic here.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "common/err.h"
#include "common/json.h"
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
		"--broker-key SHA256:... --config SITE.json [--rotate-key]\n"
		"       meridian-agent --help\n"
		"\n"
		"  --config FILE      the site config (docs/AGENT.md)\n"
		"  --print-summary    probe the scheduler once, print what the "
		"site offers\n"
		"                     as JSON and exit (1 if the scheduler "
		"cannot be reached)\n"
		"  --log-level LEVEL  debug, info, warn, error (default info)\n"
		"  --broker URL, --broker-key SHA256:...\n"
		"                     the broker to join, or to run against "
		"(default: the\n"
		"                     config's agent.broker/broker_key, else "
		"what join saved)\n"
		"  join               register this site with a broker using "
		"a one-time token;\n"
		"                     a new site key goes to agent.key_file "
		"(0600; refused if\n"
		"                     it exists unless --rotate-key), the "
		"broker URL and key to\n"
		"                     <key_file>.joined\n"
		"  --rotate-key       join: replace an existing site key\n"
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

	/* Read-only: printing must not submit or cancel anything, nor fight
	 * a running agent over the state file. */
	if ((rv = mer_agent_open_readonly(cfg, &a, err, sizeof(err)))) {
		fprintf(stderr, "meridian-agent: %s\n", err);
		return 1;
	}
	rv = mer_agent_probe(a);
	if (mer_agent_summary(a, &s) == 0) {
		/* 12 digits: 0.05, not 0.050000000000000003 */
		char *t = json_dumps(s, JSON_INDENT(2) | JSON_SORT_KEYS |
					    JSON_REAL_PRECISION(12));
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

/*
 * The joined-state file, "<agent.key_file>.joined" (0600): what join learnt
 * (broker URL, pinned broker key, site name, this site's key fingerprint),
 * so that run needs no agent.broker / agent.broker_key in the config.
 */
static void joined_path(const struct mer_agent_cfg *cfg, char *out, size_t n)
{
	snprintf(out, n, "%s.joined", cfg->key_file ? cfg->key_file : "");
}

static int joined_write(const struct mer_agent_cfg *cfg, const char *broker,
			const char *broker_fp,
			const struct mer_agent_join_result *r)
{
	char path[4096], tmp[4200];
	json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "broker", broker,
			      "broker_key", broker_fp, "site", r->site,
			      "fingerprint", r->fingerprint);
	char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
	int fd = -1, rv = MER_EIO;
	size_t len;

	json_decref(j);
	if (!text)
		return MER_ENOMEM;
	joined_path(cfg, path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		goto out_close_tmp;
	len = strlen(text);
	if (write(fd, text, len) != (ssize_t)len || fsync(fd) != 0)
		goto out_close_tmp;
	close(fd);
	fd = -1;
	if (rename(tmp, path) != 0)
		goto out_close_tmp;
	rv = 0;
out_close_tmp:
	if (fd >= 0)
		close(fd);
	if (rv)
		unlink(tmp);
	free(text);
	return rv;
}

/* Reads the joined-state file; a missing one leaves *doc empty (0). */
static int joined_read(const struct mer_agent_cfg *cfg,
		       struct mer_json_doc *doc, char *err, size_t errlen)
{
	char path[4096];

	joined_path(cfg, path, sizeof(path));
	if (access(path, F_OK) != 0)
		return 0;
	return mer_json_doc_load(path, 0, 0, doc, err, errlen);
}

static int run(const struct mer_agent_cfg *cfg, const char *broker,
	       const char *broker_fp)
{
	struct mer_keypair kp;
	struct mer_agent_loop_opts o = {0};
	struct mer_json_doc joined = {0};
	char err[1024] = "";
	int rv;

	/* --broker/--broker-key, else the config, else what join saved. */
	if ((rv = joined_read(cfg, &joined, err, sizeof(err)))) {
		fprintf(stderr, "meridian-agent: %s\n", err);
		return 1;
	}
	if (!broker && !(cfg->broker_url && *cfg->broker_url))
		broker =
		    json_string_value(json_object_get(joined.root, "broker"));
	if (!broker_fp && !(cfg->broker_key && *cfg->broker_key))
		broker_fp = json_string_value(
		    json_object_get(joined.root, "broker_key"));

	if ((rv = mer_keypair_load(cfg->key_file, &kp, err, sizeof(err)))) {
		fprintf(stderr,
			"meridian-agent: %s (run 'meridian-agent join' "
			"first)\n",
			err[0] ? err : mer_strerror(rv));
		mer_json_doc_free(&joined);
		return 1;
	}
	o.cfg = cfg;
	o.key = &kp;
	o.stop = &stop_flag;
	o.broker_url = broker;
	o.broker_fp = broker_fp;
	rv = mer_agent_loop_run(&o, err, sizeof(err));
	mer_keypair_wipe(&kp);
	mer_json_doc_free(&joined);
	if (rv) {
		fprintf(stderr, "meridian-agent: %s\n",
			err[0] ? err : mer_strerror(rv));
		return 1;
	}
	return 0;
}

static int join(const struct mer_agent_cfg *cfg, const char *broker,
		const char *token, const char *fp, int rotate)
{
	struct mer_agent_join_opts o = {0};
	struct mer_agent_join_result r;
	char err[1024] = "";
	int rv;

	o.broker_url = broker;
	o.token = token;
	o.broker_fp = fp;
	o.key_path = cfg->key_file;
	o.rotate = rotate;
	rv = mer_agent_join(&o, &r, err, sizeof(err));
	if (rv) {
		fprintf(stderr, "meridian-agent: %s%s\n", err,
			rv == MER_EEXIST && !rotate
			    ? " (to replace the site key, join again with "
			      "--rotate-key)"
			    : "");
		return 1;
	}
	if ((rv = joined_write(cfg, broker, fp, &r))) {
		char path[4096];
		joined_path(cfg, path, sizeof(path));
		fprintf(stderr,
			"meridian-agent: joined, but cannot write %s (%s): "
			"set agent.broker and agent.broker_key in the "
			"config\n",
			path, mer_strerror(rv));
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
	int print = 0, is_join = 0, rotate = 0, rv;
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
		} else if (!strcmp(a, "--rotate-key")) {
			rotate = 1;
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
		rv = join(&cfg, broker, token, fp, rotate);
	} else if (print) {
		rv = print_summary(&cfg);
	} else {
		struct sigaction sa = {0};
		sa.sa_handler = on_signal;
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		rv = run(&cfg, broker, fp);
	}
	mer_agent_cfg_free(&cfg);
	return rv;
}
