"""The smol world's prompts: real English user requests, generated deterministically from hand-written lists.

Five kinds of request (how-to, explain, advise, compare, short factual). Each kind has a list of items, each
item a phrase and its *keywords* (the words an on-topic answer uses; for a factual question, the answer), and a
list of request patterns. Every item is asked in a few of its kind's patterns (chosen by a seeded RNG), so the
same topic appears in different wordings; the train / val / test split is by item, so a test request is never
a rewording of a training one. Each row also carries the per-prompt parameters of the gold utility (a length
band in words and the feature weights, from one of three answer *profiles*); see ``docs/smol-world.md``.

``python -m stackalign.worlds.smol_prompts`` rewrites ``data/smol_prompts.jsonl``; a test checks that the
committed file equals what this module generates. The lists and the generated file are part of stackalign
(MIT license; the prompts may also be used under CC0, see ``data/PROMPTS-LICENSE.md``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA_FILE = Path(__file__).with_name("data") / "smol_prompts.jsonl"
SEED = "stackalign-smol-prompts-1"
SPLIT_ITEMS = {"test": 0.2, "val": 0.15}  # shares of each kind's items; the rest are train

# ---- how-to: "task | keywords" --------------------------------------------------------------------
HOWTO_PATTERNS = [
    "How do I {x}?",
    "What are the steps to {x}?",
    "Can you walk me through how to {x}?",
    "Give me step-by-step instructions to {x}.",
    "I have never tried to {x}. How should I go about it?",
]
HOWTO = """\
start a vegetable garden | vegetable garden soil
bake a loaf of bread | bread dough oven
change a flat bicycle tire | tire tube pump
write a cover letter | letter job employer
make a budget | budget income expenses
brew a cup of pour-over coffee | coffee water filter
train a puppy to sit | puppy treat command
clean a cast iron pan | pan oil clean
learn to juggle three balls | balls throw catch
set up a home aquarium | tank water fish
plant a tree | tree hole roots
make a paper airplane | paper fold wings
prepare for a job interview | interview questions practice
back up my computer | backup files drive
start running as a beginner | run walk pace
write a short story | story character plot
fix a leaky faucet | faucet washer water
make homemade pizza dough | dough flour yeast
organize my closet | closet clothes shelves
start a compost bin | compost bin scraps
tie a tie | tie knot collar
make a smoothie | fruit blender smoothie
paint a room | paint wall roller
memorize a speech | speech practice memorize
start journaling | journal write daily
make cold brew coffee | coffee water steep
study for an exam | study notes exam
sharpen a kitchen knife | knife stone blade
grow tomatoes in pots | tomatoes pot water
take better photos with my phone | photo light phone
start meditating | breath meditation minutes
make a simple website | html page website
hang a picture frame | nail wall frame
cook rice on the stove | rice water pot
learn to swim as an adult | swim water breathing
wash a wool sweater | wool water sweater
save money on groceries | groceries list prices
make new friends in a new city | friends people events
start learning the guitar | guitar chords practice
keep houseplants alive | plants water light
write a thank-you note | thank note card
plan a weekend camping trip | camping tent gear
reduce screen time | screen phone time
make scrambled eggs | eggs pan butter
teach a child to ride a bike | bike balance child
start a podcast | podcast microphone episodes
knit a scarf | yarn needles knit
make a to-do list that works | list tasks priority
calm down before a presentation | breathe presentation practice
descale an electric kettle | kettle vinegar water
"""

# ---- explain: "thing to explain | keywords" -------------------------------------------------------
EXPLAIN_PATTERNS = [
    "Explain {x} in simple terms.",
    "Why is it that {q}?",
    "Can you explain {x} to a beginner?",
    "I never understood {x}. Can you explain it?",
    "What is the reason that {q}?",
]
# item: "noun phrase ; question clause | keywords"
EXPLAIN = """\
why the sky is blue ; the sky is blue | light sunlight scatter
how rainbows form ; rainbows form after rain | light water droplets
how vaccines work ; vaccines protect us from disease | immune body virus
how airplanes stay in the air ; airplanes can fly | wings lift air
why we have seasons ; we have seasons | earth tilt sun
how compound interest works ; compound interest grows money so fast | interest money time
why leaves change color in autumn ; leaves change color in autumn | leaves chlorophyll green
how the heart pumps blood ; the heart pumps blood | heart blood body
why bread rises ; bread rises in the oven | yeast gas dough
how a refrigerator keeps food cold ; a refrigerator keeps food cold | heat cold refrigerant
why ice floats on water ; ice floats on water | ice water dense
how the internet sends data ; the internet can send data around the world | data packets network
why the moon has phases ; the moon has phases | moon sun light
how batteries store energy ; batteries can store energy | battery energy chemical
why we need sleep ; we need sleep | sleep brain body
how tides work ; the ocean has tides | moon gravity ocean
why cats purr ; cats purr | cats purr vibration
how inflation affects prices ; inflation makes things more expensive | prices money inflation
why the ocean is salty ; the ocean is salty | salt rivers ocean
how muscles get stronger ; muscles get stronger with exercise | muscle exercise repair
why we yawn ; people yawn | yawn brain oxygen
how photosynthesis works ; plants need sunlight | plants sunlight energy
why metal feels cold ; metal feels colder than wood | metal heat skin
how a bicycle stays upright ; a moving bicycle stays upright | balance wheels speed
why onions make you cry ; onions make people cry | onion eyes gas
how a microwave heats food ; a microwave oven heats food | microwaves water heat
why stars twinkle ; stars twinkle at night | stars atmosphere light
how recycling helps the environment ; recycling is good for the environment | recycling waste energy
why the sea looks blue ; the sea looks blue | water light blue
how credit scores work ; credit scores matter | credit score payments
why we get goosebumps ; people get goosebumps | skin hair cold
how earthquakes happen ; earthquakes happen | plates earth crust
why popcorn pops ; popcorn pops | kernel water steam
how a thermometer measures temperature ; a thermometer shows the temperature | temperature heat liquid
why some people are left-handed ; some people are left-handed | brain hand genes
how noise-cancelling headphones work ; noise-cancelling headphones are quiet | sound waves noise
why the days are shorter in winter ; the days are shorter in winter | sun earth tilt
how bees make honey ; bees make honey | bees nectar honey
why exercise improves mood ; exercise improves mood | exercise brain mood
how a compass works ; a compass points north | magnetic north needle
"""

# ---- advise: "situation | keywords" ---------------------------------------------------------------
ADVISE_PATTERNS = [
    "I {x}. What should I do?",
    "Any advice? I {x}.",
    "I {x}. Do you have any tips?",
    "What would you suggest? I {x}.",
    "My friend says I should ask for advice: I {x}.",
]
ADVISE = """\
can't fall asleep at night | sleep bed routine
feel nervous before exams | exam study calm
want to eat healthier but love snacks | snacks fruit healthy
procrastinate on my homework | homework start break
have trouble saving money | save money budget
feel lonely after moving to a new town | friends people club
want to start exercising but have no time | exercise minutes walk
get distracted by my phone while working | phone focus work
am nervous about public speaking | speech practice audience
want to read more books | books read minutes
keep forgetting people's names | names repeat remember
drink too much coffee | coffee water sleep
have a messy desk | desk clean organize
want to learn a new language | language practice words
feel tired every afternoon | tired sleep lunch
argue with my roommate about chores | roommate chores talk
want to ask for a raise | raise manager salary
spend too much money online | shopping money budget
am bored with my job | job skills work
want to get better at cooking | cooking recipes practice
have too many unread emails | email inbox folders
feel stressed about deadlines | deadlines plan tasks
want to wake up earlier | wake alarm bed
am starting my first job next week | job colleagues questions
have a hard time saying no | boundaries say polite
want to write every day | write habit minutes
feel anxious when I travel | travel plan calm
want my plants to grow faster | plants light water
keep losing my keys | keys place hook
want to run my first 5k | run training pace
am moving to a new apartment | boxes pack move
want to be more patient with my kids | kids patience calm
get headaches when I use the computer | screen breaks eyes
want to stop biting my nails | nails habit hands
am planning my first trip abroad | passport travel plan
have a job offer in another city | offer city move
want to be more productive in the morning | morning routine tasks
feel overwhelmed by housework | chores schedule clean
am learning to code and feel stuck | code practice projects
want to spend less time on social media | social media time
"""

# ---- compare: "a ; b ; context | keywords (a b ...)" ------------------------------------------------
COMPARE_PATTERNS = [
    "Compare {a} and {b}{c}.",
    "What is the difference between {a} and {b}{c}?",
    "Which is better{c}: {a} or {b}?",
    "Should I choose {a} or {b}{c}?",
    "{A} or {b}{c}? What are the pros and cons?",
]
COMPARE = """\
tea ; coffee ;  in the morning | tea coffee caffeine
cats ; dogs ;  as pets | cats dogs pets
running ; swimming ;  for fitness | running swimming exercise
renting ; buying a home ;  for a young couple | renting buying home
paper books ; e-readers ;  for reading | paper books reader
trains ; planes ;  for a trip of 500 kilometers | train plane travel
Python ; JavaScript ;  for a first programming language | python javascript programming
a laptop ; a desktop ;  for a student | laptop desktop student
studying alone ; studying in a group ;  | alone group study
gas stoves ; electric stoves ;  for cooking | gas electric stove
walking ; cycling ;  to work | walking cycling work
savings accounts ; index funds ;  for beginners | savings index funds
city life ; country life ;  for a family | city country family
yoga ; weight training ;  | yoga weights strength
handwritten notes ; typed notes ;  for studying | handwritten typed notes
a gym membership ; home workouts ;  | gym home workouts
baking ; frying ;  for healthy cooking | baking frying oil
credit cards ; debit cards ;  | credit debit cards
podcasts ; audiobooks ;  for a long commute | podcasts audiobooks listening
working from home ; working in an office ;  | home office work
a dog ; a cat ;  for a small apartment | dog cat apartment
public transport ; driving ;  in a big city | transport driving city
LED bulbs ; incandescent bulbs ;  | led incandescent energy
summer ; winter ;  for a vacation | summer winter vacation
chess ; checkers ;  for kids | chess checkers kids
acoustic guitars ; electric guitars ;  for beginners | acoustic electric guitar
rice ; pasta ;  for dinner | rice pasta dinner
morning workouts ; evening workouts ;  | morning evening workout
email ; phone calls ;  for work | email phone calls
cash ; card payments ;  when traveling | cash card travel
hiking boots ; trail shoes ;  | boots shoes trail
a tablet ; a laptop ;  for a grandparent | tablet laptop screen
wood ; metal ;  for outdoor furniture | wood metal furniture
learning online ; learning in a classroom ;  | online classroom learning
tents ; hammocks ;  for camping | tent hammock camping
"""

# ---- factual: "question | answer keywords" -----------------------------------------------------------
FACTUAL_PATTERNS = [
    "{x}",
    "Quick question: {xl}",
    "Do you know {xi}?",
    "I forgot: {xl}",
]
# item: "question ; indirect form | keywords"
FACTUAL = """\
What is the capital of Australia? ; what the capital of Australia is | canberra
What is the largest planet in our solar system? ; what the largest planet in our solar system is | jupiter
How many legs does a spider have? ; how many legs a spider has | eight 8
What gas do plants take in from the air? ; what gas plants take in from the air | carbon dioxide
Who wrote Romeo and Juliet? ; who wrote Romeo and Juliet | shakespeare
What is the boiling point of water in Celsius? ; what the boiling point of water in Celsius is | 100
What is the capital of Japan? ; what the capital of Japan is | tokyo
How many days are there in a leap year? ; how many days there are in a leap year | 366
What is the chemical symbol for gold? ; what the chemical symbol for gold is | au
Which planet is known as the Red Planet? ; which planet is known as the Red Planet | mars
What is the largest ocean on Earth? ; what the largest ocean on Earth is | pacific
How many continents are there? ; how many continents there are | seven 7
What is the freezing point of water in Fahrenheit? ; what the freezing point of water in Fahrenheit is | 32
Who painted the Mona Lisa? ; who painted the Mona Lisa | leonardo vinci
What is the tallest mountain in the world? ; what the tallest mountain in the world is | everest
What language is spoken in Brazil? ; what language is spoken in Brazil | portuguese
How many minutes are in an hour? ; how many minutes are in an hour | 60 sixty
What is the capital of Canada? ; what the capital of Canada is | ottawa
What is the longest river in Africa? ; what the longest river in Africa is | nile
What do bees make? ; what bees make | honey
What is the smallest prime number? ; what the smallest prime number is | two 2
How many sides does a hexagon have? ; how many sides a hexagon has | six 6
What is the main ingredient in guacamole? ; what the main ingredient in guacamole is | avocado
Which animal is the largest mammal? ; which animal is the largest mammal | blue whale
What is the capital of France? ; what the capital of France is | paris
What is the hardest natural substance? ; what the hardest natural substance is | diamond
Who was the first person to walk on the moon? ; who the first person to walk on the moon was | armstrong
What is the currency of the United Kingdom? ; what the currency of the United Kingdom is | pound
How many hours are in a day? ; how many hours are in a day | 24
What is the closest star to Earth? ; what the closest star to Earth is | sun
What color do you get by mixing blue and yellow? ; what color you get by mixing blue and yellow | green
What is the capital of Italy? ; what the capital of Italy is | rome
How many players are on a soccer team on the field? ; how many players a soccer team has on the field | eleven 11
Which organ pumps blood through the body? ; which organ pumps blood through the body | heart
What is the largest desert in the world? ; what the largest desert in the world is | antarctic sahara
What is the capital of Spain? ; what the capital of Spain is | madrid
How many strings does a standard guitar have? ; how many strings a standard guitar has | six 6
What do caterpillars turn into? ; what caterpillars turn into | butterflies moths
What is the main gas in the air we breathe? ; what the main gas in the air we breathe is | nitrogen
Which country has the largest population? ; which country has the largest population | india china
What is the square root of 81? ; what the square root of 81 is | nine 9
Who invented the telephone? ; who invented the telephone | bell
What is the capital of Egypt? ; what the capital of Egypt is | cairo
How many bones are in the adult human body? ; how many bones are in the adult human body | 206
What is the fastest land animal? ; what the fastest land animal is | cheetah
What is the largest country by area? ; what the largest country by area is | russia
What planet do we live on? ; what planet we live on | earth
In which country are the pyramids of Giza? ; in which country the pyramids of Giza are | egypt
What is H2O commonly called? ; what H2O is commonly called | water
How many weeks are in a year? ; how many weeks are in a year | 52
What is the capital of Germany? ; what the capital of Germany is | berlin
Which instrument has 88 keys? ; which instrument has 88 keys | piano
What is the opposite of north? ; what the opposite of north is | south
What is the biggest bone in the human body? ; what the biggest bone in the human body is | femur thigh
Which season comes after summer? ; which season comes after summer | autumn fall
What is the capital of Kenya? ; what the capital of Kenya is | nairobi
How many colors are in a rainbow? ; how many colors are in a rainbow | seven 7
What metal is liquid at room temperature? ; what metal is liquid at room temperature | mercury
What is frozen water called? ; what frozen water is called | ice
Who developed the theory of relativity? ; who developed the theory of relativity | einstein
"""

# ---- gold parameters by kind and profile ----------------------------------------------------------
# Length bands in words (a 64-token answer has about 45 words). Three profiles per kind: a user who wants a
# brief answer, a balanced one, or a detailed one.
BANDS = {
    "howto": {"brief": (15, 28), "balanced": (22, 38), "detailed": (30, 45)},
    "explain": {"brief": (10, 22), "balanced": (18, 32), "detailed": (26, 44)},
    "advise": {"brief": (8, 20), "balanced": (15, 30), "detailed": (24, 42)},
    "compare": {"brief": (10, 24), "balanced": (18, 34), "detailed": (26, 44)},
    "factual": {"brief": (3, 12), "balanced": (6, 20), "detailed": (12, 30)},
}
# Positive feature weights (topic, length, structure, ending) by profile; they sum to 1, so a perfect answer
# scores 1 on every prompt. Penalty weights (repetition, tics) are the same for every prompt.
PROFILE_WEIGHTS = {
    "brief": {"topic": 0.30, "length": 0.35, "structure": 0.10, "ending": 0.25},
    "balanced": {"topic": 0.35, "length": 0.25, "structure": 0.20, "ending": 0.20},
    "detailed": {"topic": 0.40, "length": 0.15, "structure": 0.30, "ending": 0.15},
}
PENALTY_WEIGHTS = {"repetition": 0.5, "tics": 0.3}
PROFILES = ("brief", "balanced", "detailed")
KINDS = ("howto", "explain", "advise", "compare", "factual")


def _lines(block: str) -> list[tuple[str, list[str]]]:
    out = []
    for line in block.strip().splitlines():
        phrase, kw = line.split("|")
        out.append((phrase.strip(), kw.split()))
    return out


def _requests(kind: str, phrase: str) -> list[str]:
    """Every wording of one item in its kind's patterns."""
    if kind == "howto":
        return [p.format(x=phrase) for p in HOWTO_PATTERNS]
    if kind == "explain":
        noun, clause = (s.strip() for s in phrase.split(";"))
        return [p.format(x=noun, q=clause) for p in EXPLAIN_PATTERNS]
    if kind == "advise":
        return [p.format(x=phrase) for p in ADVISE_PATTERNS]
    if kind == "compare":
        a, b, c = (s.strip() for s in phrase.split(";"))
        c = f" {c}" if c else ""
        return [p.format(a=a, A=a[:1].upper() + a[1:], b=b, c=c) for p in COMPARE_PATTERNS]
    if kind == "factual":
        q, indirect = (s.strip() for s in phrase.split(";"))
        return [p.format(x=q, xl=q[:1].lower() + q[1:], xi=indirect) for p in FACTUAL_PATTERNS]
    raise ValueError(f"unknown kind {kind!r}")


ITEMS = {"howto": HOWTO, "explain": EXPLAIN, "advise": ADVISE, "compare": COMPARE, "factual": FACTUAL}
WORDINGS_PER_ITEM = {"howto": 3, "explain": 3, "advise": 3, "compare": 3, "factual": 3}


def generate() -> list[dict]:
    """All prompt rows, in file order (train, val, test; kinds mixed within a split); deterministic."""
    rng = random.Random(SEED)
    rows: list[dict] = []
    for kind in KINDS:
        items = _lines(ITEMS[kind])
        order = list(range(len(items)))
        rng.shuffle(order)
        n_test = round(SPLIT_ITEMS["test"] * len(items))
        n_val = round(SPLIT_ITEMS["val"] * len(items))
        split_of = {
            i: "test" if r < n_test else "val" if r < n_test + n_val else "train" for r, i in enumerate(order)
        }
        for i, (phrase, keywords) in enumerate(items):
            wordings = _requests(kind, phrase)
            picks = sorted(rng.sample(range(len(wordings)), WORDINGS_PER_ITEM[kind]))
            for w in picks:
                profile = rng.choice(PROFILES)
                rows.append(
                    {
                        "split": split_of[i],
                        "kind": kind,
                        "item": i,
                        "request": wordings[w],
                        "keywords": [k.lower() for k in keywords],
                        "profile": profile,
                        "band": list(BANDS[kind][profile]),
                        "weights": {**PROFILE_WEIGHTS[profile], **PENALTY_WEIGHTS},
                    }
                )
    # within a split the kinds are interleaved by a seeded shuffle, so that the first n prompts of a split
    # (a recipe's ``prompts.limit``) are a mix of kinds
    ordered = []
    for split in ("train", "val", "test"):
        part = sorted(
            (r for r in rows if r["split"] == split),
            key=lambda r: (KINDS.index(r["kind"]), r["item"], r["request"]),
        )
        rng.shuffle(part)
        ordered += part
    rows = ordered
    for n, r in enumerate(rows):
        r["id"] = f"smol-{n:04d}"
    return rows


def render(rows: list[dict]) -> str:
    return "".join(
        json.dumps({"id": r["id"], **{k: v for k, v in r.items() if k != "id"}}) + "\n" for r in rows
    )


def load_rows(path: Path = DATA_FILE) -> list[dict]:
    """The shipped prompt rows (``data/smol_prompts.jsonl``)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    DATA_FILE.write_text(render(generate()), encoding="utf-8")
    print(f"wrote {DATA_FILE}")


if __name__ == "__main__":
    main()
