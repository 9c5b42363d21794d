/*
 * Replay benchmark: a seeded federation (48 sites in 8 regions) and a day
 * of jobs (30 per hour) replayed under Meridian and every baseline. Prints
 * the comparison table and one "BENCH {...}" line per policy for
 * bench/run.sh: money, egress, job completion times, waits, GPU use,
 * residency violations, unplaced jobs and the replay speed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common/err.h"
#include "policy/replay.h"
#include "policy/tracegen.h"

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void)
{
	struct mer_tracegen_opts o;
	json_t *fed = NULL, *pj = NULL, *recs = NULL;
	struct mer_trace *tr = NULL;
	struct mer_policy *pol = NULL;
	struct mer_replay_result *res[MER_RP_COUNT] = {0};
	double secs[MER_RP_COUNT] = {0};
	char err[512];
	int status = 1;
	size_t n = 0;

	mer_tracegen_defaults(&o);
	o.seed = 2026;
	o.sites = 48;
	o.regions = 8;
	o.hours = 24;
	o.jobs_per_hour = 60;
	if (mer_tracegen_federation(&o, &fed) || mer_tracegen_policy(&o, &pj) ||
	    mer_tracegen_trace(&o, fed, &recs) ||
	    mer_trace_from_records(recs, &tr, err, sizeof(err)) ||
	    mer_policy_from_json(pj, NULL, &pol, err, sizeof(err))) {
		fprintf(stderr, "replay_bench: setup failed: %s\n", err);
		goto out;
	}
	printf("replay: %u sites in %u regions, %zu jobs over %.0f h "
	       "(seed %llu), policy %s\n",
	       o.sites, o.regions, tr->njobs, o.hours,
	       (unsigned long long)o.seed, pol->version);
	for (int p = 0; p < MER_RP_COUNT; p++) {
		struct mer_replay_opts ro = {.policy = p, .seed = o.seed};
		double t0 = now_s();
		if (mer_replay_run(fed, tr, pol, &ro, &res[n], err,
				   sizeof(err))) {
			fprintf(stderr, "replay_bench: %s: %s\n",
				mer_replay_policy_name(p), err);
			goto out;
		}
		secs[n++] = now_s() - t0;
	}
	mer_replay_print_table(stdout, res, n);
	printf("\n");
	mer_replay_print_sites(stdout, res, n, 12);
	printf("\n");
	for (size_t k = 0; k < n; k++) {
		const struct mer_replay_result *r = res[k];
		double speed = secs[k] > 0 ? r->horizon_s / 3600 / secs[k] : 0;
		printf("%-16s replayed %.1f simulated h in %.3f s: %.0f "
		       "simulated h per second\n",
		       mer_replay_policy_name(r->policy), r->horizon_s / 3600,
		       secs[k], speed);
		printf("BENCH {\"bench\":\"replay\",\"policy\":\"%s\","
		       "\"sites\":%u,\"regions\":%u,\"jobs\":%zu,"
		       "\"seed\":%llu,\"compute_usd\":%.2f,"
		       "\"egress_bytes\":%.0f,\"egress_usd\":%.2f,"
		       "\"jct_mean_s\":%.1f,\"jct_p95_s\":%.1f,"
		       "\"wait_mean_s\":%.1f,\"gpu_utilization\":%.4f,"
		       "\"residency_violations\":%zu,\"jobs_unplaced\":%zu,"
		       "\"stages_unplaced\":%zu,\"simulated_hours\":%.1f,"
		       "\"wall_s\":%.4f,\"sim_hours_per_s\":%.1f}\n",
		       mer_replay_policy_name(r->policy), o.sites, o.regions,
		       r->jobs, (unsigned long long)o.seed, r->compute_usd,
		       r->egress_bytes, r->egress_usd, r->jct_mean_s,
		       r->jct_p95_s, r->wait_mean_s, r->gpu_util,
		       r->residency_violations, r->jobs_unplaced,
		       r->stages_unplaced, r->horizon_s / 3600, secs[k], speed);
	}
	if (res[0] && res[0]->residency_violations) {
		fprintf(stderr, "replay_bench: Meridian broke residency\n");
		goto out;
	}
	status = 0;
out:
	for (size_t k = 0; k < n; k++)
		mer_replay_result_free(res[k]);
	mer_policy_free(pol);
	mer_trace_free(tr);
	json_decref(recs);
	json_decref(pj);
	json_decref(fed);
	return status;
}
