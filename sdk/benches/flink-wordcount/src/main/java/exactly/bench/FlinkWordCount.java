package exactly.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;

import org.apache.flink.api.common.JobExecutionResult;
import org.apache.flink.api.common.accumulators.IntCounter;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.CheckpointListener;
import org.apache.flink.api.common.state.ValueState;
import org.apache.flink.api.common.state.ValueStateDescriptor;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple2;
import org.apache.flink.configuration.CheckpointingOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.CoreOptions;
import org.apache.flink.configuration.StateBackendOptions;
import org.apache.flink.connector.datagen.source.DataGeneratorSource;
import org.apache.flink.core.execution.CheckpointingMode;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.KeyedProcessFunction;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;
import org.apache.flink.util.Collector;
import org.apache.flink.util.FileUtils;

/**
 * The word count of {@code sdk/benches/pipeline.rs} on Apache Flink's local
 * MiniCluster, for that bench to compare against in the same run.
 *
 * <p>The job: the words of a text file (split at whitespace, cycled up to
 * {@code --records}), lower-cased (a map), keyed by the word, counted in a
 * {@code ValueState<Long>} that emits {@code (word, count)}, filtered to every
 * hundredth count, into a {@link DiscardingSink}. Every operator runs at the
 * given parallelism; checkpoints are exactly-once every 100 ms, state in the
 * heap ("hashmap") backend, checkpoints written to a local directory.
 *
 * <p>One JVM runs {@code --warmup-runs} unmeasured rounds, then
 * {@code --runs} measured rounds; a round runs the job once at each
 * parallelism of {@code --parallelism}. Each run prints one line to stdout:
 *
 * <pre>flink-wordcount: run=measured parallelism=1 records=4000000 net_ms=2345 wall_ms=3011 records_per_s=1705756 checkpoints=21</pre>
 *
 * <p>{@code net_ms} is Flink's own job duration
 * ({@link JobExecutionResult#getNetRuntime}: from the job's arrival at the
 * MiniCluster's dispatcher until it finished) and {@code records_per_s} is
 * computed from it; {@code wall_ms} adds starting and stopping the
 * MiniCluster, which {@code execute} does for each job. Logs go to stderr.
 */
public final class FlinkWordCount {

    /** The checkpoint interval, as in the Rust bench. */
    private static final long CHECKPOINT_INTERVAL_MS = 100;

    private FlinkWordCount() {}

    /**
     * Runs the warm-up and measured rounds and prints one line per run.
     *
     * @param args {@code --words FILE --records N} and optionally
     *     {@code --parallelism 1,2 --warmup-runs 1 --runs 1}
     * @throws Exception when a job fails
     */
    public static void main(String[] args) throws Exception {
        Map<String, String> options = parseOptions(args);
        long records = Long.parseLong(options.get("records"));
        List<Integer> parallelisms = new ArrayList<>();
        for (String p : options.getOrDefault("parallelism", "1,2").split(",")) {
            parallelisms.add(Integer.parseInt(p.trim()));
        }
        int warmups = Integer.parseInt(options.getOrDefault("warmup-runs", "1"));
        int runs = Integer.parseInt(options.getOrDefault("runs", "1"));
        Vocabulary.load(Path.of(options.get("words")));

        Path tmpDir = Files.createTempDirectory("flink-wordcount-");
        try {
            for (int round = 0; round < warmups + runs; round++) {
                String kind = round < warmups ? "warmup" : "measured";
                for (int parallelism : parallelisms) {
                    runOnce(kind, parallelism, records, tmpDir.resolve("run-" + round + "-" + parallelism));
                }
            }
        } finally {
            FileUtils.deleteDirectory(tmpDir.toFile());
        }
    }

    /** Runs the job once on a fresh MiniCluster and prints its line. */
    private static void runOnce(String kind, int parallelism, long records, Path dir) throws Exception {
        Configuration conf = new Configuration();
        conf.set(CoreOptions.TMP_DIRS, dir.resolve("tmp").toString());
        conf.set(StateBackendOptions.STATE_BACKEND, "hashmap");
        conf.set(CheckpointingOptions.CHECKPOINT_STORAGE, "filesystem");
        conf.set(CheckpointingOptions.CHECKPOINTS_DIRECTORY, dir.resolve("checkpoints").toUri().toString());
        StreamExecutionEnvironment env = StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.enableCheckpointing(CHECKPOINT_INTERVAL_MS, CheckpointingMode.EXACTLY_ONCE);

        DataGeneratorSource<String> words =
                new DataGeneratorSource<>(Vocabulary::word, records, Types.STRING);
        env.fromSource(words, WatermarkStrategy.noWatermarks(), "words")
                .map(String::toLowerCase)
                .returns(Types.STRING)
                .name("normalise")
                .keyBy(word -> word, Types.STRING)
                .process(new Count())
                .name("count")
                .filter(update -> update.f1 % 100 == 0)
                .name("every-hundredth")
                .sinkTo(new DiscardingSink<>());

        long started = System.nanoTime();
        JobExecutionResult result = env.execute("exactly-bench-flink-wordcount");
        long wallMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
        long netMs = result.getNetRuntime(TimeUnit.MILLISECONDS);
        Integer checkpoints = result.getAccumulatorResult(Count.CHECKPOINTS);
        System.out.printf(
                "flink-wordcount: run=%s parallelism=%d records=%d net_ms=%d wall_ms=%d records_per_s=%.0f checkpoints=%d%n",
                kind, parallelism, records, netMs, wallMs, records * 1000.0 / netMs,
                checkpoints == null ? 0 : checkpoints);
        System.out.flush();
    }

    /**
     * The input words, held in a static field: the MiniCluster runs the tasks
     * in this JVM, so the generator reads them from memory, as the Rust bench's
     * source reads its vector, instead of shipping millions of strings inside
     * the job graph.
     */
    static final class Vocabulary {
        private static String[] words = new String[0];

        private Vocabulary() {}

        /** Reads the file's words the way the Rust bench does (Rust's {@code split_whitespace}). */
        static void load(Path file) throws IOException {
            String text = Files.readString(file).strip();
            words = text.isEmpty() ? new String[0] : text.split("\\s+");
        }

        /** The {@code index}-th input record: the words cycled. */
        static String word(Long index) {
            return words[(int) (index % words.length)];
        }
    }

    /**
     * Counts each word in keyed state and emits {@code (word, count)}; counts
     * completed checkpoints (on subtask 0) in an accumulator.
     */
    private static final class Count extends KeyedProcessFunction<String, String, Tuple2<String, Long>>
            implements CheckpointListener {

        static final String CHECKPOINTS = "checkpoints";

        private transient ValueState<Long> count;
        private transient IntCounter checkpoints;

        @Override
        public void open(OpenContext context) {
            count = getRuntimeContext().getState(new ValueStateDescriptor<>("count", Types.LONG));
            checkpoints = new IntCounter();
            if (getRuntimeContext().getTaskInfo().getIndexOfThisSubtask() == 0) {
                getRuntimeContext().addAccumulator(CHECKPOINTS, checkpoints);
            }
        }

        @Override
        public void processElement(String word, Context context, Collector<Tuple2<String, Long>> out)
                throws Exception {
            Long previous = count.value();
            long next = previous == null ? 1 : previous + 1;
            count.update(next);
            out.collect(Tuple2.of(word, next));
        }

        @Override
        public void notifyCheckpointComplete(long checkpointId) {
            checkpoints.add(1);
        }
    }

    /** Reads {@code --name value} pairs; exits with a usage line on anything else. */
    private static Map<String, String> parseOptions(String[] args) {
        List<String> known = List.of("words", "records", "parallelism", "warmup-runs", "runs");
        Map<String, String> options = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            String name = args[i].startsWith("--") ? args[i].substring(2) : "";
            if (!known.contains(name) || options.put(name, args[i + 1]) != null) {
                exitWithUsage();
            }
        }
        if (args.length % 2 != 0 || !options.containsKey("words") || !options.containsKey("records")) {
            exitWithUsage();
        }
        return options;
    }

    private static void exitWithUsage() {
        System.err.println(
                "usage: java -jar flink-wordcount.jar --words FILE --records N"
                        + " [--parallelism 1,2] [--warmup-runs 1] [--runs 1]");
        System.exit(2);
    }
}
