/**
 * The translation table (pure): entries and ServiceIP kinds, the indexed table with snapshots and
 * deltas for Workers, and the table-query result / static table parsers.
 *
 * @example
 * ```ts
 * import { parseQueryResult, TranslationTable } from "./mod.ts";
 * const t = new TranslationTable();
 * declare const payload: string; // a `tablequery/result` MQTT payload
 * const r = parseQueryResult(JSON.parse(payload));
 * t.replaceJob(r.job, r.entries);
 * ```
 */
export * from "./entry.ts";
export * from "./keys.ts";
export * from "./v6map.ts";
export * from "./table.ts";
export * from "./query_result.ts";
export * from "./u32map.ts";
export * from "./shared_view.ts";
export * from "./v6index.ts";
