/*
 * Text tables and human-readable figures for meridianctl's output: columns
 * sized to their widest cell, durations ("3m12s"), ages and money. Only
 * presentation; nothing here talks to the broker.
 */
#ifndef MERIDIAN_CLI_TABLE_H
#define MERIDIAN_CLI_TABLE_H

#include <stddef.h>
#include <stdio.h>

struct mer_table;

/* A table with ncols columns named by headers (copied). */
int mer_table_new(const char *const *headers, size_t ncols,
		  struct mer_table **out);
/* Starts a new row; cells are then added left to right. */
int mer_table_row(struct mer_table *t);
/* Appends one cell to the current row (printf format; NULL text is "-").
 * Cells past the last column are refused with MER_EINVAL. */
int mer_table_cell(struct mer_table *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Rows so far. */
size_t mer_table_rows(const struct mer_table *t);
/* Writes the header and rows, each line prefixed by indent spaces; columns
 * are separated by two spaces and padded by characters (UTF-8), the last
 * one not padded. Missing cells print as "-". */
void mer_table_print(const struct mer_table *t, FILE *f, int indent);
void mer_table_free(struct mer_table *t);

/* "0s", "45s", "3m12s", "2h05m", "3d04h"; negative durations get "-". */
void mer_fmt_duration(double seconds, char *out, size_t n);
/* Duration since unix time ts at now: "12s ago"; "-" when ts <= 0. */
void mer_fmt_age(long long now, long long ts, char *out, size_t n);
/* "2026-11-30 15:00:00Z" (UTC); "-" when ts <= 0. */
void mer_fmt_time(long long ts, char *out, size_t n);
/* "$12.34", "$0.0012" for small amounts, "-" for NaN. */
void mer_fmt_usd(double usd, char *out, size_t n);

#endif
