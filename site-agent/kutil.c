/*
 * Helpers shared by the adapters (quantities, GPU model names, job names,
 * nested JSON lookups, reading a token file). No other I/O.
 */
#include "site-agent/kutil.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/err.h"

int mer_agent_quantity(const json_t *v, double *out)
{
	static const struct {
		const char *sfx;
		double mul;
	} units[] = {
	    {"Ki", 1024.0},
	    {"Mi", 1048576.0},
	    {"Gi", 1073741824.0},
	    {"Ti", 1099511627776.0},
	    {"Pi", 1125899906842624.0},
	    {"Ei", 1152921504606846976.0},
	    {"n", 1e-9},
	    {"u", 1e-6},
	    {"m", 1e-3},
	    {"k", 1e3},
	    {"M", 1e6},
	    {"G", 1e9},
	    {"T", 1e12},
	    {"P", 1e15},
	    {"E", 1e18},
	    {"", 1},
	};
	const char *s;
	char *end;
	double x;

	if (json_is_number(v)) {
		*out = json_number_value(v);
		return 0;
	}
	if (!(s = json_string_value(v)) || !*s)
		return MER_EPARSE;
	errno = 0;
	x = strtod(s, &end);
	if (errno || end == s || !isfinite(x) || x < 0)
		return MER_EPARSE;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].sfx) == 0) {
			*out = x * units[i].mul;
			return 0;
		}
	}
	return MER_EPARSE;
}

void mer_agent_gpu_model(const char *product, char *out, size_t n)
{
	/* Longest first, so "a100" is not taken for "a10". */
	static const char *const known[] = {
	    "gh200", "h800",   "h200",	 "h100",  "a800", "a100",
	    "l40s",  "l40",    "a6000",	 "a5000", "a40",  "a30",
	    "a10g",  "a10",    "v100",	 "h20",	  "t4",	  "l4",
	    "p100",  "mi300x", "mi250x", "mi250", "910b",
	};
	char low[128];
	size_t j = 0;

	if (n == 0)
		return;
	for (size_t i = 0; product && product[i] && j + 1 < sizeof(low); i++)
		low[j++] = (char)tolower((unsigned char)product[i]);
	low[j] = '\0';
	for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
		const char *p = strstr(low, known[k]);
		size_t kl = strlen(known[k]);
		/* a whole token: not followed by a letter or digit */
		while (p && isalnum((unsigned char)p[kl]))
			p = strstr(p + 1, known[k]);
		if (p && (p == low || !isalnum((unsigned char)p[-1]))) {
			snprintf(out, n, "%s", known[k]);
			return;
		}
	}
	j = 0;
	for (size_t i = 0; low[i] && j + 1 < n && j < 40; i++) {
		char c = low[i];
		out[j++] = (isalnum((unsigned char)c) || c == '.' || c == '_')
			       ? c
			       : '-';
	}
	out[j] = '\0';
	if (j == 0)
		snprintf(out, n, "unknown");
}

void mer_agent_job_name(const char *stage_id, char *out, size_t n)
{
	uint32_t h = 2166136261u;
	char clean[48];
	size_t j = 0;

	for (const char *p = stage_id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	for (const char *p = stage_id; *p && j < 40; p++) {
		char c = (char)tolower((unsigned char)*p);
		if (isalnum((unsigned char)c))
			clean[j++] = c;
		else if (j > 0 && clean[j - 1] != '-')
			clean[j++] = '-';
	}
	while (j > 0 && clean[j - 1] == '-')
		j--;
	clean[j] = '\0';
	if (j)
		snprintf(out, n, "mer-%s-%08x", clean, h);
	else
		snprintf(out, n, "mer-%08x", h);
}

static json_t *vget(const json_t *v, va_list ap)
{
	const char *k;

	while (v && (k = va_arg(ap, const char *)))
		v = json_object_get(v, k);
	return (json_t *)v;
}

json_t *mer_agent_jget(const json_t *v, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, v);
	r = vget(v, ap);
	va_end(ap);
	return r;
}

const char *mer_agent_jstr(const json_t *v, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, v);
	r = vget(v, ap);
	va_end(ap);
	return json_string_value(r);
}

int mer_agent_read_token(const char *path, char **out)
{
	FILE *f = fopen(path, "r");
	char buf[8192];
	size_t n;

	*out = NULL;
	if (!f)
		return MER_EIO;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
			 buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		n--;
	buf[n] = '\0';
	*out = n ? strdup(buf) : NULL;
	sodium_memzero(buf, sizeof(buf));
	if (!n)
		return MER_EINVAL;
	return *out ? 0 : MER_ENOMEM;
}

void mer_agent_free_token(char *tok)
{
	if (!tok)
		return;
	sodium_memzero(tok, strlen(tok));
	free(tok);
}
