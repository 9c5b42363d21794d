/*
 * meridianctl's tables and figures (see table.h). Widths count characters,
 * not bytes, so site names or notes in UTF-8 still line up. Not a general
 * terminal library: no colours, no wrapping.
 */
#include "cli/table.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

struct mer_table {
	size_t ncols;
	char **headers;
	char **cells; /* nrows * ncols, NULL for a missing cell */
	size_t nrows, cap_rows;
	size_t cur; /* next column of the current row */
};

int mer_table_new(const char *const *headers, size_t ncols,
		  struct mer_table **out)
{
	struct mer_table *t;

	*out = NULL;
	if (ncols == 0)
		return MER_EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return MER_ENOMEM;
	t->ncols = ncols;
	t->headers = calloc(ncols, sizeof(*t->headers));
	if (!t->headers)
		goto out_free;
	for (size_t i = 0; i < ncols; i++)
		if (!(t->headers[i] = strdup(headers[i] ? headers[i] : "")))
			goto out_free;
	*out = t;
	return 0;
out_free:
	mer_table_free(t);
	return MER_ENOMEM;
}

int mer_table_row(struct mer_table *t)
{
	if (t->nrows == t->cap_rows) {
		size_t cap = t->cap_rows ? t->cap_rows * 2 : 16;
		char **nc = realloc(t->cells, cap * t->ncols * sizeof(*nc));
		if (!nc)
			return MER_ENOMEM;
		memset(nc + t->cap_rows * t->ncols, 0,
		       (cap - t->cap_rows) * t->ncols * sizeof(*nc));
		t->cells = nc;
		t->cap_rows = cap;
	}
	t->nrows++;
	t->cur = 0;
	return 0;
}

int mer_table_cell(struct mer_table *t, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;
	int n;

	if (t->nrows == 0 || t->cur >= t->ncols)
		return MER_EINVAL;
	va_start(ap, fmt);
	n = vasprintf(&s, fmt ? fmt : "-", ap);
	va_end(ap);
	if (n < 0)
		return MER_ENOMEM;
	t->cells[(t->nrows - 1) * t->ncols + t->cur++] = s;
	return 0;
}

size_t mer_table_rows(const struct mer_table *t)
{
	return t ? t->nrows : 0;
}

/* Characters in a UTF-8 string: bytes that do not continue a sequence. */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		w += ((unsigned char)*s & 0xC0) != 0x80;
	return w;
}

static void print_line(const struct mer_table *t, FILE *f, int indent,
		       char *const *cells, const size_t *width)
{
	size_t pad = (size_t)indent;

	/* Padding is written only before a non-empty cell, so no line ends
	 * in blanks when its last cells are empty. */
	for (size_t c = 0; c < t->ncols; c++) {
		const char *s = cells[c] ? cells[c] : "-";
		if (*s) {
			fprintf(f, "%*s%s", (int)pad, "", s);
			pad = 0;
		}
		pad += width[c] - text_width(s) + 2;
	}
	fputc('\n', f);
}

void mer_table_print(const struct mer_table *t, FILE *f, int indent)
{
	size_t *width;

	if (!t)
		return;
	width = calloc(t->ncols, sizeof(*width));
	if (!width)
		return;
	for (size_t c = 0; c < t->ncols; c++) {
		width[c] = text_width(t->headers[c]);
		for (size_t r = 0; r < t->nrows; r++) {
			const char *s = t->cells[r * t->ncols + c];
			size_t w = text_width(s ? s : "-");
			if (w > width[c])
				width[c] = w;
		}
	}
	print_line(t, f, indent, t->headers, width);
	for (size_t r = 0; r < t->nrows; r++)
		print_line(t, f, indent, t->cells + r * t->ncols, width);
	free(width);
}

void mer_table_free(struct mer_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; t->headers && i < t->ncols; i++)
		free(t->headers[i]);
	for (size_t i = 0; t->cells && i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->headers);
	free(t->cells);
	free(t);
}

void mer_fmt_duration(double seconds, char *out, size_t n)
{
	long long s;

	if (!isfinite(seconds) || seconds < 0) {
		snprintf(out, n, "-");
		return;
	}
	s = (long long)(seconds + 0.5);
	if (s < 60)
		snprintf(out, n, "%llds", s);
	else if (s < 3600)
		snprintf(out, n, "%lldm%02llds", s / 60, s % 60);
	else if (s < 86400)
		snprintf(out, n, "%lldh%02lldm", s / 3600, s % 3600 / 60);
	else
		snprintf(out, n, "%lldd%02lldh", s / 86400, s % 86400 / 3600);
}

void mer_fmt_age(long long now, long long ts, char *out, size_t n)
{
	char d[32];

	if (ts <= 0) {
		snprintf(out, n, "-");
		return;
	}
	mer_fmt_duration(now > ts ? (double)(now - ts) : 0, d, sizeof(d));
	snprintf(out, n, "%s ago", d);
}

void mer_fmt_time(long long ts, char *out, size_t n)
{
	struct tm tm;
	time_t t = (time_t)ts;

	if (ts <= 0 || !gmtime_r(&t, &tm) ||
	    strftime(out, n, "%Y-%m-%d %H:%M:%SZ", &tm) == 0)
		snprintf(out, n, "-");
}

void mer_fmt_usd(double usd, char *out, size_t n)
{
	if (!isfinite(usd))
		snprintf(out, n, "-");
	else if (usd != 0 && fabs(usd) < 0.01)
		snprintf(out, n, "%s$%.4f", usd < 0 ? "-" : "", fabs(usd));
	else
		snprintf(out, n, "%s$%.2f", usd <= -0.005 ? "-" : "",
			 fabs(usd));
}
