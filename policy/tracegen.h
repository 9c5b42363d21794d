/*
 * The seeded generator behind bench/gen-trace and the replay benchmark:
 * federations of any size (sites, regions, GPU models, prices, links,
 * tagged datasets), a policy with residency rules for their tags, and
 * traces mixing data-prep -> training -> inference pipelines, single
 * training jobs, best-effort jobs and long-running inference
 * (docs/SIMULATOR.md). Same options and seed, same documents; no I/O
 * beyond the FILE * callers pass.
 */
#ifndef MERIDIAN_POLICY_TRACEGEN_H
#define MERIDIAN_POLICY_TRACEGEN_H

#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

struct mer_tracegen_opts {
	uint64_t seed;
	unsigned sites;	      /* >= 1 */
	unsigned regions;     /* >= 1, <= sites */
	double hours;	      /* arrivals span [0, hours) */
	double jobs_per_hour; /* mean of a Poisson arrival process */
	long long epoch;      /* unix seconds of t = 0 */
};

/* seed 1, 24 sites in 6 regions, 24 hours, 10 jobs per hour. */
void mer_tracegen_defaults(struct mer_tracegen_opts *o);

/* A federation file (docs/SITES.md). MER_EINVAL for bad options. */
int mer_tracegen_federation(const struct mer_tracegen_opts *o, json_t **out);

/* A policy file for that federation: batch time at 10 USD/h, online at
 * 100, and residency rules for the tags its datasets carry. */
int mer_tracegen_policy(const struct mer_tracegen_opts *o, json_t **out);

/* Trace records (a header with the epoch, then jobs by arrival) for the
 * federation fed, as mer_trace_from_records reads them. */
int mer_tracegen_trace(const struct mer_tracegen_opts *o, const json_t *fed,
		       json_t **out);

/* Writes records one per line (JSON Lines, keys sorted). MER_EIO. */
int mer_tracegen_write_lines(FILE *f, const json_t *records);

#endif
