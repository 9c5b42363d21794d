/*
 * gen-trace: writes a seeded federation file, a matching policy file and a
 * trace for the replay simulator (docs/SIMULATOR.md). Same options, same
 * files. Not a benchmark; `replay` reads what it writes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "policy/tracegen.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: gen-trace [--seed N] [--sites N] [--regions N] "
		   "[--hours H]\n"
		   "                 [--jobs-per-hour R] [--epoch UNIX]\n"
		   "                 --fed FILE --trace FILE [--policy FILE]\n"
		   "Writes a federation (docs/SITES.md), a trace (JSON Lines) "
		   "and a policy\nwith residency rules for the generated "
		   "datasets' tags.\n");
}

static int num(const char *s, double lo, double hi, double *out)
{
	char *end = NULL;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static int write_json(const char *path, const json_t *v, int lines)
{
	FILE *f = fopen(path, "w");
	int rv;

	if (!f) {
		fprintf(stderr, "gen-trace: %s: %s\n", path, strerror(errno));
		return 1;
	}
	if (lines)
		rv = mer_tracegen_write_lines(f, v);
	else
		rv = json_dumpf(v, f, JSON_INDENT(1) | JSON_SORT_KEYS) ||
			     fputc('\n', f) == EOF
			 ? MER_EIO
			 : 0;
	if (fclose(f) || rv) {
		fprintf(stderr, "gen-trace: %s: write failed\n", path);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct mer_tracegen_opts o;
	const char *fed_path = NULL, *trace_path = NULL, *pol_path = NULL;
	json_t *fed = NULL, *trace = NULL, *pol = NULL;
	int status = 1;

	mer_tracegen_defaults(&o);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		double x;
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		}
		if (!v) {
			usage(stderr);
			return 2;
		}
		i++;
		if (strcmp(a, "--fed") == 0)
			fed_path = v;
		else if (strcmp(a, "--trace") == 0)
			trace_path = v;
		else if (strcmp(a, "--policy") == 0)
			pol_path = v;
		else if (strcmp(a, "--seed") == 0 && !num(v, 0, 1e15, &x))
			o.seed = (uint64_t)x;
		else if (strcmp(a, "--sites") == 0 && !num(v, 1, 100000, &x))
			o.sites = (unsigned)x;
		else if (strcmp(a, "--regions") == 0 && !num(v, 1, 1000, &x))
			o.regions = (unsigned)x;
		else if (strcmp(a, "--hours") == 0 && !num(v, 0.001, 8760, &x))
			o.hours = x;
		else if (strcmp(a, "--jobs-per-hour") == 0 &&
			 !num(v, 0.001, 1e6, &x))
			o.jobs_per_hour = x;
		else if (strcmp(a, "--epoch") == 0 && !num(v, 0, 4e9, &x))
			o.epoch = (long long)x;
		else {
			fprintf(stderr,
				"gen-trace: bad option or value: %s %s\n", a,
				v);
			return 2;
		}
	}
	if (!fed_path || !trace_path) {
		usage(stderr);
		return 2;
	}
	if (o.regions > o.sites) {
		fprintf(stderr,
			"gen-trace: --regions must not exceed --sites\n");
		return 2;
	}
	if (mer_tracegen_federation(&o, &fed) ||
	    mer_tracegen_trace(&o, fed, &trace) ||
	    mer_tracegen_policy(&o, &pol)) {
		fprintf(stderr, "gen-trace: generation failed\n");
		goto out;
	}
	if (write_json(fed_path, fed, 0) || write_json(trace_path, trace, 1) ||
	    (pol_path && write_json(pol_path, pol, 0)))
		goto out;
	printf("gen-trace: %u sites in %u regions, %zu jobs over %.1f h "
	       "(seed %llu)\n",
	       o.sites, o.regions, json_array_size(trace) - 1, o.hours,
	       (unsigned long long)o.seed);
	status = 0;
out:
	json_decref(fed);
	json_decref(trace);
	json_decref(pol);
	return status;
}
