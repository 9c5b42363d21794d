/*
 * The broker's Prometheus metrics: HTTP requests by route, method and
 * status, latency histograms (HTTP, placement, etcd) and plain counters,
 * rendered in the text exposition format. Gauges that come from state (jobs
 * by state, agents connected) are written by their owners through
 * mer_metrics_gauge() while rendering. Not a general metrics library.
 */
#ifndef MERIDIAN_BROKER_METRICS_H
#define MERIDIAN_BROKER_METRICS_H

#include <stdint.h>
#include <stdio.h>

struct mer_metrics;

enum mer_hist_id {
	MER_H_HTTP = 0,	 /* meridian_http_request_duration_seconds */
	MER_H_PLACEMENT, /* meridian_placement_duration_seconds */
	MER_H_ETCD,	 /* meridian_etcd_request_duration_seconds */
	MER_H_COUNT
};

enum mer_counter_id {
	MER_C_PLACEMENTS = 0,	  /* jobs placed (all stages) */
	MER_C_PLACEMENTS_PENDING, /* placement rounds leaving stages pending */
	MER_C_JOBS_SUBMITTED,
	MER_C_IDEM_REPLAYS,
	MER_C_AUTH_FAILURES,
	MER_C_COUNT
};

int mer_metrics_new(struct mer_metrics **out);
void mer_metrics_free(struct mer_metrics *m);

/* The http observe hook (common/http.h): counters only, never blocks. */
void mer_metrics_http_observe(void *m, const char *method, const char *route,
			      int status, double seconds);
void mer_metrics_observe(struct mer_metrics *m, enum mer_hist_id h,
			 double seconds);
void mer_metrics_inc(struct mer_metrics *m, enum mer_counter_id c, uint64_t by);

/* Writes every family this module owns. */
void mer_metrics_render(struct mer_metrics *m, FILE *out);

/* Helpers for owners of other families: "# HELP/# TYPE" once, then
 * samples. labels is "" or 'state="running"'. */
void mer_metrics_header(FILE *out, const char *name, const char *type,
			const char *help);
void mer_metrics_sample(FILE *out, const char *name, const char *labels,
			double value);

#endif
