-- Gates and rule counts of the kept runs: which gate failed, with its figures, and whether a run
-- was served by force (recsys publish --run N --force).
SELECT r.id, r.status, (p.run_id IS NOT NULL) AS served, r.gates -> 'passed' AS passed,
       r.gates -> 'forced' AS forced, c ->> 'gate' AS gate, c -> 'value' AS value,
       c -> 'min' AS min, c -> 'max' AS max, c -> 'passed' AS gate_passed, r.rule_counts
FROM recommendation_runs r
LEFT JOIN published_recommendations p ON p.run_id = r.id
LEFT JOIN LATERAL jsonb_array_elements(r.gates -> 'checks') c ON true
ORDER BY r.id DESC;
