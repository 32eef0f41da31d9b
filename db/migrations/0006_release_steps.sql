-- Crash-safe release steps: the controller records what it is about to do to the load balancer
-- (an intent) before it acts, and closes the step together with the release's state change
-- after. A step left open (the controller was killed between the two) is what `lazyrec-release
-- reconcile` — run by every command before it acts — completes or undoes, by comparing the
-- intent with the load balancer's state.
CREATE TABLE release_steps (
    step_id    bigserial PRIMARY KEY,
    release_id bigint NOT NULL REFERENCES releases (release_id),
    intent     jsonb NOT NULL,                 -- {"action": "route" | "promote" | "abort" | "rollback", …}
    started_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz,
    outcome    text                            -- completed | undone
);
-- At most one open step, across all releases: two controllers never act at once.
CREATE UNIQUE INDEX release_steps_one_open ON release_steps ((true)) WHERE closed_at IS NULL;

-- The experiment's window as the load balancer applied it (its clock, from the admin API's
-- answer): rows answered before the start or after the end belong to no look of this release,
-- whatever the controller's own timing.
ALTER TABLE releases ADD COLUMN experiment_started_at timestamptz,
                     ADD COLUMN experiment_ended_at   timestamptz;
