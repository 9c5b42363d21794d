/*
 * Counters and histograms behind /metrics, and their text rendering. The
 * label sets are bounded: routes are patterns (not paths), methods a fixed
 * list, statuses three digits, so the HTTP table cannot grow without bound.
 */
#include "broker/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define HTTP_SLOTS 256
#define NBUCKETS 14

static const double bounds[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
					0.025,	0.05,  0.1,    0.25,  0.5,
					1,	2.5,   5,      10};

struct hist {
	uint64_t b[NBUCKETS + 1];
	double sum;
	uint64_t n;
};

struct http_slot {
	char method[8];
	char route[64];
	int status;
	uint64_t n;
};

struct mer_metrics {
	pthread_mutex_t mu;
	struct http_slot http[HTTP_SLOTS];
	size_t nhttp;
	uint64_t http_overflow;
	struct hist h[MER_H_COUNT];
	uint64_t c[MER_C_COUNT];
};

static const char *const hist_name[MER_H_COUNT] = {
    "meridian_http_request_duration_seconds",
    "meridian_placement_duration_seconds",
    "meridian_etcd_request_duration_seconds"};
static const char *const hist_help[MER_H_COUNT] = {
    "Time from request to answer.",
    "Time to place one job (engine and etcd write).",
    "Time of the broker's etcd transactions (job batches, updates)."};
static const char *const ctr_name[MER_C_COUNT] = {
    "meridian_placements_total", "meridian_placements_pending_total",
    "meridian_jobs_submitted_total", "meridian_idempotent_replays_total",
    "meridian_auth_failures_total"};
static const char *const ctr_help[MER_C_COUNT] = {
    "Jobs whose every stage was placed.",
    "Placement attempts that left stages pending.",
    "Jobs accepted (201) and stored in etcd.",
    "POSTs answered from an idempotency record.",
    "Requests refused for a missing or unknown bearer token."};

int mer_metrics_new(struct mer_metrics **out)
{
	struct mer_metrics *m = calloc(1, sizeof(*m));

	*out = m;
	if (!m)
		return MER_ENOMEM;
	pthread_mutex_init(&m->mu, NULL);
	return 0;
}

void mer_metrics_free(struct mer_metrics *m)
{
	if (!m)
		return;
	pthread_mutex_destroy(&m->mu);
	free(m);
}

static void hist_add(struct hist *h, double v)
{
	size_t i = 0;

	while (i < NBUCKETS && v > bounds[i])
		i++;
	h->b[i]++;
	h->sum += v;
	h->n++;
}

void mer_metrics_http_observe(void *arg, const char *method, const char *route,
			      int status, double seconds)
{
	struct mer_metrics *m = arg;
	size_t i;

	pthread_mutex_lock(&m->mu);
	hist_add(&m->h[MER_H_HTTP], seconds);
	for (i = 0; i < m->nhttp; i++)
		if (m->http[i].status == status &&
		    strcmp(m->http[i].route, route) == 0 &&
		    strcmp(m->http[i].method, method) == 0)
			break;
	if (i == m->nhttp) {
		if (m->nhttp == HTTP_SLOTS) {
			m->http_overflow++;
			pthread_mutex_unlock(&m->mu);
			return;
		}
		snprintf(m->http[i].method, sizeof(m->http[i].method), "%s",
			 method);
		snprintf(m->http[i].route, sizeof(m->http[i].route), "%s",
			 route);
		m->http[i].status = status;
		m->nhttp++;
	}
	m->http[i].n++;
	pthread_mutex_unlock(&m->mu);
}

void mer_metrics_observe(struct mer_metrics *m, enum mer_hist_id h,
			 double seconds)
{
	pthread_mutex_lock(&m->mu);
	hist_add(&m->h[h], seconds);
	pthread_mutex_unlock(&m->mu);
}

void mer_metrics_inc(struct mer_metrics *m, enum mer_counter_id c, uint64_t by)
{
	pthread_mutex_lock(&m->mu);
	m->c[c] += by;
	pthread_mutex_unlock(&m->mu);
}

void mer_metrics_header(FILE *out, const char *name, const char *type,
			const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void mer_metrics_sample(FILE *out, const char *name, const char *labels,
			double value)
{
	if (labels && *labels)
		fprintf(out, "%s{%s} %.17g\n", name, labels, value);
	else
		fprintf(out, "%s %.17g\n", name, value);
}

void mer_metrics_render(struct mer_metrics *m, FILE *out)
{
	struct mer_metrics *c = malloc(sizeof(*c));
	char lb[160];

	if (!c)
		return;
	/* Copy under the lock, print without it. */
	pthread_mutex_lock(&m->mu);
	memcpy(c, m, sizeof(*c));
	pthread_mutex_unlock(&m->mu);

	mer_metrics_header(
	    out, "meridian_http_requests_total", "counter",
	    "HTTP requests by route pattern, method and status.");
	for (size_t i = 0; i < c->nhttp; i++) {
		snprintf(
		    lb, sizeof(lb), "route=\"%s\",method=\"%s\",code=\"%d\"",
		    c->http[i].route, c->http[i].method, c->http[i].status);
		mer_metrics_sample(out, "meridian_http_requests_total", lb,
				   (double)c->http[i].n);
	}
	for (int h = 0; h < MER_H_COUNT; h++) {
		uint64_t cum = 0;
		char name[96];

		mer_metrics_header(out, hist_name[h], "histogram",
				   hist_help[h]);
		snprintf(name, sizeof(name), "%s_bucket", hist_name[h]);
		for (int i = 0; i < NBUCKETS; i++) {
			cum += c->h[h].b[i];
			snprintf(lb, sizeof(lb), "le=\"%g\"", bounds[i]);
			mer_metrics_sample(out, name, lb, (double)cum);
		}
		cum += c->h[h].b[NBUCKETS];
		mer_metrics_sample(out, name, "le=\"+Inf\"", (double)cum);
		snprintf(name, sizeof(name), "%s_sum", hist_name[h]);
		mer_metrics_sample(out, name, "", c->h[h].sum);
		snprintf(name, sizeof(name), "%s_count", hist_name[h]);
		mer_metrics_sample(out, name, "", (double)c->h[h].n);
	}
	for (int i = 0; i < MER_C_COUNT; i++) {
		mer_metrics_header(out, ctr_name[i], "counter", ctr_help[i]);
		mer_metrics_sample(out, ctr_name[i], "", (double)c->c[i]);
	}
	free(c);
}
