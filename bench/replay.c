/*
 * replay: runs a trace on a federation under Meridian's engine and the
 * baseline policies, and prints the comparison table, GPU use by site and
 * CSV files (docs/SIMULATOR.md). Virtual time: a day replays in seconds.
 * Not a benchmark of its own; replay_bench.c is.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/json.h"
#include "policy/replay.h"

#define MAX_FILE (1024u << 20)

static void usage(FILE *f)
{
	fprintf(f,
		"usage: replay --fed FILE --trace FILE [--policy FILE]\n"
		"              [--run meridian,random,round-robin,least-loaded,"
		"cheapest-compute,data-local|all]\n"
		"              [--seed N] [--max-time S] [--csv FILE] "
		"[--sites-csv FILE]\n"
		"              [--show-sites N]\n");
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int read_all(const char *path, char **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0, cap = 0;

	if (!f)
		return MER_EIO;
	for (;;) {
		if (n + 65536 > cap) {
			size_t nc = cap ? cap * 2 : 1 << 20;
			char *b = nc > MAX_FILE ? NULL : realloc(buf, nc + 1);
			if (!b) {
				free(buf);
				fclose(f);
				return MER_ETOOBIG;
			}
			buf = b;
			cap = nc;
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		n += r;
		if (r == 0)
			break;
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		return MER_EIO;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

static int parse_runs(const char *s, int *runs, size_t *n)
{
	char buf[256], *save = NULL;

	*n = 0;
	if (strcmp(s, "all") == 0) {
		for (int i = 0; i < MER_RP_COUNT; i++)
			runs[(*n)++] = i;
		return 0;
	}
	snprintf(buf, sizeof(buf), "%s", s);
	for (char *t = strtok_r(buf, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		int p;
		if (mer_replay_policy_parse(t, &p) || *n == MER_RP_COUNT)
			return -1;
		runs[(*n)++] = p;
	}
	return *n ? 0 : -1;
}

static int write_csv(const char *path, struct mer_replay_result **r, size_t n,
		     int sites)
{
	FILE *f = fopen(path, "w");

	if (!f) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
		return 1;
	}
	if (sites)
		mer_replay_write_sites_csv(f, r, n);
	else
		mer_replay_write_csv(f, r, n);
	if (fclose(f)) {
		fprintf(stderr, "replay: %s: write failed\n", path);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *fed_path = NULL, *trace_path = NULL, *pol_path = NULL;
	const char *csv = NULL, *sites_csv = NULL;
	int runs[MER_RP_COUNT];
	size_t nruns = 0, nres = 0;
	unsigned long long seed = 1;
	unsigned long show_sites = 30;
	double max_time = 0;
	struct mer_json_doc fdoc = {0};
	struct mer_trace *tr = NULL;
	struct mer_policy *pol = NULL;
	struct mer_replay_result *res[MER_RP_COUNT] = {0};
	char err[1024], *text = NULL;
	size_t len = 0;
	int status = 1, rv;

	parse_runs("all", runs, &nruns);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		char *end = NULL;
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (!v) {
			usage(stderr);
			return 2;
		}
		i++;
		errno = 0;
		if (strcmp(a, "--fed") == 0)
			fed_path = v;
		else if (strcmp(a, "--trace") == 0)
			trace_path = v;
		else if (strcmp(a, "--policy") == 0)
			pol_path = v;
		else if (strcmp(a, "--csv") == 0)
			csv = v;
		else if (strcmp(a, "--sites-csv") == 0)
			sites_csv = v;
		else if (strcmp(a, "--run") == 0 &&
			 !parse_runs(v, runs, &nruns))
			;
		else if (strcmp(a, "--seed") == 0 &&
			 ((seed = strtoull(v, &end, 10)),
			  !errno && *v && !*end))
			;
		else if (strcmp(a, "--show-sites") == 0 &&
			 ((show_sites = strtoul(v, &end, 10)),
			  !errno && *v && !*end))
			;
		else if (strcmp(a, "--max-time") == 0 &&
			 ((max_time = strtod(v, &end)),
			  !errno && *v && !*end && max_time >= 0))
			;
		else {
			fprintf(stderr, "replay: bad option or value: %s %s\n",
				a, v);
			return 2;
		}
	}
	if (!fed_path || !trace_path) {
		usage(stderr);
		return 2;
	}
	if (mer_json_doc_load(fed_path, MAX_FILE, 0, &fdoc, err, sizeof(err))) {
		fprintf(stderr, "replay: %s\n", err);
		goto out;
	}
	if ((rv = read_all(trace_path, &text, &len))) {
		fprintf(stderr, "replay: %s: %s\n", trace_path,
			rv == MER_EIO ? strerror(errno) : mer_strerror(rv));
		goto out;
	}
	if (mer_trace_parse(trace_path, text, len, &tr, err, sizeof(err))) {
		fprintf(stderr, "replay: %s\n", err);
		goto out;
	}
	if (pol_path ? mer_policy_load(pol_path, &pol, err, sizeof(err))
		     : mer_policy_default(&pol)) {
		fprintf(stderr, "replay: %s\n", pol_path ? err : "no policy");
		goto out;
	}
	printf("replay: %zu jobs, policy %s\n", tr->njobs, pol->version);
	for (size_t k = 0; k < nruns; k++) {
		struct mer_replay_opts o = {
		    .policy = runs[k], .seed = seed, .max_time_s = max_time};
		double t0 = now_s();
		rv = mer_replay_run(fdoc.root, tr, pol, &o, &res[nres], err,
				    sizeof(err));
		if (rv) {
			fprintf(stderr, "replay: %s: %s\n",
				mer_replay_policy_name(runs[k]),
				err[0] ? err : mer_strerror(rv));
			goto out;
		}
		double dt = now_s() - t0;
		printf("  %-16s replayed %.1f simulated hours in %.2f s "
		       "(%.0f h/s)\n",
		       mer_replay_policy_name(runs[k]),
		       res[nres]->horizon_s / 3600, dt,
		       dt > 0 ? res[nres]->horizon_s / 3600 / dt : 0);
		nres++;
	}
	printf("\n");
	mer_replay_print_table(stdout, res, nres);
	printf("\n");
	mer_replay_print_sites(stdout, res, nres, show_sites);
	if ((csv && write_csv(csv, res, nres, 0)) ||
	    (sites_csv && write_csv(sites_csv, res, nres, 1)))
		goto out;
	status = 0;
out:
	for (size_t k = 0; k < nres; k++)
		mer_replay_result_free(res[k]);
	mer_policy_free(pol);
	mer_trace_free(tr);
	mer_json_doc_free(&fdoc);
	free(text);
	return status;
}
